"""multiple_choice: (context, choice) pairs as B x C x L inputs with a varying number of
choices, a softmax over the real choices only, clear errors, and training/prediction next
to classification."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from polytask import Trainer, load, load_config
from polytask.errors import DataError
from polytask.models.backbones import build_text
from polytask.models.inputs import TextInputs, collate
from polytask.models.spec import BackboneSpec
from polytask.tasks.kinds import IGNORE, TASK_KINDS
from polytask.tasks.kinds.multiple_choice import MultipleChoice
from polytask.tasks.spec import Task

CHOICES = ["good", "bad", "great", "awful", "tasty"]


def _kind(input: list[str] | None = None, **options: object) -> MultipleChoice:
    task = Task(name="mc", kind="multiple_choice", input=input or ["context", "choices"],
                label="answer", options=options)
    return TASK_KINDS.get("multiple_choice")(task)


@pytest.fixture(scope="module")
def encoder(tiny_bert: Path) -> TextInputs:
    return TextInputs(AutoTokenizer.from_pretrained(tiny_bert), "tiny-bert", 16)


def _rows(n: int, seed: int = 0) -> pd.DataFrame:
    """'the movie was X' with 2 to 4 choices, one of them X."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        choices = list(rng.choice(CHOICES, int(rng.integers(2, 5)), replace=False))
        answer = int(rng.integers(len(choices)))
        rows.append({"context": f"the movie was {choices[answer]}", "choices": choices,
                     "answer": answer})
    return pd.DataFrame(rows)


def test_a_varying_number_of_choices_is_padded_and_masked(encoder: TextInputs) -> None:
    frame = pd.DataFrame({"context": ["the movie was good", "the food was tasty"],
                          "choices": [["good", "bad"], ["awful", "tasty", "bad"]],
                          "answer": [0, 1]})
    kind = _kind()
    inputs = kind.encode_inputs(frame, encoder, "train")
    labels = kind.encode(frame, "train")
    assert inputs["input_ids"].shape == (2, 3, 16)
    assert labels.tolist() == [[0, 2], [1, 3]]
    assert inputs["attention_mask"][0, 2].sum() == 0  # row 0 has no third choice
    assert (inputs["token_type_ids"][1, 1] == 1).any()  # (context, choice) pairs
    batch = collate(inputs, torch.tensor([0, 1]))
    longest = int(inputs["attention_mask"].sum(dim=-1).max())
    assert batch["input_ids"].shape == (2, 3, longest)
    scores = torch.tensor([[1.0, 0.0, 9.0], [0.0, 2.0, 1.0]])  # row 0's 9.0 is padding
    assert kind.metrics(scores, labels) == {"accuracy": 1.0}
    assert kind.metrics(scores, torch.tensor([[0, 2], [2, 3]])) == {"accuracy": 0.5}
    padded = scores.clone()
    padded[0, 2] = -5.0
    outputs, changed = scores.unsqueeze(-1), padded.unsqueeze(-1)
    assert kind.loss(outputs, labels) == pytest.approx(float(kind.loss(changed, labels)))
    assert kind.decode_encoded(scores, "train") == ["good", "tasty"]
    proba = kind.decode_encoded(scores, "train", proba=True)
    assert list(proba[0]) == ["good", "bad"] and sum(proba[0].values()) == pytest.approx(1.0)
    unlabelled = torch.tensor([[0, 2], [IGNORE, 3]])
    assert kind.metrics(scores, unlabelled) == {"accuracy": 1.0}  # row 1 is not scored


def test_one_choice_per_column_with_text_and_letter_answers(encoder: TextInputs) -> None:
    frame = pd.DataFrame({"context": ["the plot", "the actor"], "a": ["good", "bad"],
                          "b": ["great", None], "answer": ["great", "bad"]})
    kind = _kind(["context", "a", "b"], answer="text")
    assert kind.encode_inputs(frame, encoder, "train")["input_ids"].shape[:2] == (2, 2)
    assert kind.encode(frame, "train").tolist() == [[1, 2], [0, 1]]
    letters = _kind(["context", "a", "b"], answer="letter")
    letters.encode_inputs(frame, encoder, "train")
    assert letters.encode(frame.assign(answer=["B", "a"]), "train").tolist() == [[1, 2], [0, 1]]


def test_hf_encoder_scores_each_choice_as_its_own_sequence(tiny_bert: Path) -> None:
    backbone, encoder = build_text(BackboneSpec(type="hf", name=str(tiny_bert), max_length=16))
    backbone.eval()
    frame = pd.DataFrame({"context": ["the movie", "the film"],
                          "choices": [["was good", "was bad", "was great"], ["was awful"]],
                          "answer": [0, 0]})
    inputs = collate(_kind().encode_inputs(frame, encoder, "test"), torch.tensor([0, 1]))
    features = backbone(inputs)
    assert features.shape == (2, 3, backbone.output_dim)
    assert torch.equal(features[1, 1:], torch.zeros(2, backbone.output_dim))  # padding
    alone = backbone(collate({k: v[0] for k, v in inputs.items()}, torch.tensor([1])))
    torch.testing.assert_close(features[0, 1:2], alone, atol=1e-5, rtol=1e-5)


def test_bad_choices_and_answers_name_the_field(encoder: TextInputs) -> None:
    frame = pd.DataFrame({"context": ["a", "b"], "choices": [["good"], []], "answer": [0, 0]})
    with pytest.raises(DataError, match=r"tasks\.mc\.input: row 1 of the train split has no "
                       r"choices"):
        _kind().encode_inputs(frame, encoder, "train")
    kind = _kind()
    frame = pd.DataFrame({"context": ["a"], "choices": [["good", "bad"]], "answer": [2]})
    kind.encode_inputs(frame, encoder, "train")
    with pytest.raises(DataError, match=r"tasks\.mc\.label: row 0 of the train split holds 2, "
                       r"which is not one of its 2 choices"):
        kind.encode(frame, "train")
    gap = pd.DataFrame({"context": ["a"], "x": [None], "y": ["good"], "answer": [0]})
    with pytest.raises(DataError, match=r"empty choice before a filled one"):
        _kind(["context", "x", "y"]).encode_inputs(gap, encoder, "train")


@pytest.mark.parametrize(("sampler", "balancer"), [("temperature", "ew"), ("all", "pcgrad")])
def test_multiple_choice_trains_next_to_classification_and_predicts_a_choice(
        tmp_path: Path, tiny_bert: Path, text_files: dict[str, Path], sampler: str,
        balancer: str) -> None:
    """pcgrad needs every task at every step, so it runs with the `all` sampler."""
    config = load_config({
        "tasks": [
            {"name": "mc", "kind": "multiple_choice", "input": ["context", "choices"],
             "label": "answer", "data": _rows(40)},
            {"name": "sentiment", "kind": "classification", "input": "sentence",
             "label": "label", "data": {"path": str(text_files["sentiment"])}},
        ],
        "model": {"backbone": {"type": "hf", "name": str(tiny_bert), "max_length": 16}},
        "sampler": sampler,
        "balancer": balancer,
        "train": {"max_steps": 4, "batch_size": 8, "eval_every": 4, "progress": False,
                  "callbacks": [], "lr": 5e-3},
        "baselines": "none",
    })
    results = Trainer(config, tmp_path / "run").fit()
    assert 0.0 <= results["tasks"]["mc"]["metrics"]["accuracy"] <= 1.0
    rows = _rows(3, seed=7)
    predicted = load(tmp_path / "run").predict(rows[["context", "choices"]], "mc")
    for choices, chosen in zip(rows.choices, predicted["mc"], strict=True):
        assert chosen in choices
