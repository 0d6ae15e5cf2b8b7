"""Text pairs (`input: [premise, hypothesis]`) feed every sentence-level kind on a text
encoder as one (first, second) sequence; a token task refuses a pair."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from transformers import AutoTokenizer

from polytask import Trainer, load, load_config
from polytask.errors import DataError
from polytask.models.inputs import TextInputs

PAIR = ["premise", "hypothesis"]


def _pairs(n: int = 48) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    words = ["good", "bad", "great", "awful"]
    premises = [f"the movie was {w}" for w in rng.choice(words, n)]
    hypotheses = [f"the plot was {w}" for w in rng.choice(words, n)]
    same = [p.split()[-1] == h.split()[-1] for p, h in zip(premises, hypotheses, strict=True)]
    return pd.DataFrame({
        "premise": premises, "hypothesis": hypotheses,
        "relation": ["same" if s else "other" for s in same],
        "tags": ["good" if "good" in p + h else "" for p, h in zip(premises, hypotheses,
                                                                  strict=True)],
        "score": [float(s) + 0.1 * i / n for i, s in enumerate(same)],
    })


def test_a_pair_is_one_sequence_of_two_segments(tiny_bert: Path) -> None:
    encoder = TextInputs(AutoTokenizer.from_pretrained(tiny_bert), "tiny-bert", 24)
    frame = _pairs(4)
    pair = encoder.encode(frame, PAIR)
    sep = encoder.tokenizer.sep_token_id
    assert ((pair["input_ids"] == sep).sum(dim=1) == 2).all()  # [CLS] a [SEP] b [SEP]
    assert (pair["token_type_ids"].amax(dim=1) == 1).all()  # the second text is segment 1
    swapped = encoder.encode(frame, PAIR[::-1])
    assert not (swapped["input_ids"] == pair["input_ids"]).all()
    with pytest.raises(DataError, match=r"one column of word lists, got \['premise', "
                       r"'hypothesis'\]"):
        encoder.encode(frame, PAIR, words=True)


def test_every_sentence_level_kind_trains_and_predicts_on_pairs(
        tmp_path: Path, tiny_bert: Path) -> None:
    config = load_config({
        "data": _pairs(),
        "tasks": [
            {"name": "relation", "kind": "classification", "input": PAIR, "label": "relation"},
            {"name": "tags", "kind": "multilabel", "input": PAIR, "label": "tags",
             "labels": ["good"]},
            {"name": "score", "kind": "regression", "input": PAIR, "label": "score"},
        ],
        "model": {"backbone": {"type": "hf", "name": str(tiny_bert), "max_length": 24}},
        "train": {"max_steps": 3, "batch_size": 8, "eval_every": 3, "progress": False,
                  "callbacks": [], "lr": 5e-3},
        "baselines": "none",
    })
    results = Trainer(config, tmp_path / "run").fit()
    assert set(results["tasks"]) == {"relation", "tags", "score"}
    predicted = load(tmp_path / "run").predict(_pairs(3)[PAIR])
    assert set(predicted["relation"]) <= {"same", "other"}
    assert all(isinstance(v, float) for v in predicted["score"])
