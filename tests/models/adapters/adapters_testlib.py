"""Shared pieces of the adapter tests: a tiny random BERT (or LLaMA) backbone with an
adapter attached, token batches of different lengths, and a text-task run config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from polytask.models.adapters import ADAPTERS, Adapter
from polytask.models.backbones import HFEncoder
from polytask.models.inputs import Encoded
from polytask.models.model import MultiTaskModel

TASKS = ("a", "b", "c")
OPTIONS: dict[str, Any] = {"r": 4}
WIDTH = 16
VOCAB = 60


def bert_encoder() -> HFEncoder:
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return HFEncoder(BertModel(config))


def adapted(name: str, backbone: nn.Module | None = None, seed: int = 0,
            tasks: tuple[str, ...] = TASKS, **options: Any) -> MultiTaskModel:
    """A MultiTaskModel over a tiny BERT with adapter `name` attached, its parameters drawn
    at random (so a zero-initialised up-projection does not hide the routing)."""
    torch.manual_seed(seed)
    backbone = backbone if backbone is not None else bert_encoder()
    adapter = ADAPTERS.get(name)(tasks, **{**OPTIONS, **options})
    adapter.attach(backbone)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in adapter.adapter_parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.2)
    heads = {t: nn.Linear(WIDTH, 2) for t in tasks}
    return MultiTaskModel(backbone, heads, feature_dim=WIDTH, adapter=adapter)


def adapter_of(model: MultiTaskModel) -> Adapter:
    assert model.adapter is not None
    return model.adapter


def tokens(rows: int, length: int, seed: int) -> Encoded:
    """Random token ids; every other row ends in two padding positions."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[::2, -2:] = 0
    ids = torch.randint(5, VOCAB, (rows, length), generator=generator) * mask
    return {"input_ids": ids, "attention_mask": mask,
            "token_type_ids": torch.zeros(rows, length, dtype=torch.long)}


def batches() -> dict[str, Encoded]:
    """One batch per task, each of its own length and size."""
    return {"a": tokens(3, 7, 1), "b": tokens(4, 5, 2), "c": tokens(2, 9, 3)}


def private_parameters(model: MultiTaskModel, task: str) -> list[Tensor]:
    return list(adapter_of(model).task_parameters(task))


def text_config(tiny_bert_path: Path, files: dict[str, Path], adapter: dict[str, Any],
                **train: Any) -> dict[str, Any]:
    """Two sentence tasks and one token task on the tiny BERT, with `adapter`."""
    return {
        "tasks": [
            {"name": "sentiment", "kind": "classification", "input": "sentence",
             "label": "label", "data": {"path": str(files["sentiment"])}},
            {"name": "topic", "kind": "classification", "input": "text", "label": "topic",
             "data": {"path": str(files["topic"])}},
            {"name": "ner", "kind": "token_classification", "input": "tokens",
             "label": "tags", "data": {"path": str(files["ner"])}},
        ],
        "model": {"backbone": {"type": "hf", "name": str(tiny_bert_path), "max_length": 16},
                  "adapter": adapter},
        "sampler": "all",
        "baselines": "none",
        "train": {"max_steps": 4, "batch_size": 4, "eval_every": 100, "progress": False,
                  "lr": 5e-3, "checkpoint_every": 2, "callbacks": [], **train},
    }
