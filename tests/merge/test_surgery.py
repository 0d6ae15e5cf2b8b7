"""Representation surgery on a tiny MLP backbone: closer to the experts, heads wrap."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from polytask import merge
from polytask.errors import ConfigError
from polytask.merge import MergeData, MergeTask, StateDict
from polytask.merge.surgery import (
    RepresentationSurgery,
    backbone_state,
    surgery_state,
    wrap_heads,
)
from polytask.models.backbones import MLPBackbone
from polytask.tasks.kinds import Classification
from polytask.tasks.spec import Task

HIDDEN = [8, 6]


def _backbone(state: StateDict) -> nn.Module:
    module = MLPBackbone(4, [], HIDDEN)
    module.load_state_dict(state)
    return module.eval()


def _task(name: str, seed: int) -> MergeTask:
    kind = Classification(Task(name=name, kind="classification", input="x", label="y"))
    kind.load_state({"labels": ["a", "b"]})
    numeric = torch.randn(32, 4, generator=torch.Generator().manual_seed(seed))

    def batches() -> Iterator[tuple[dict[str, Tensor], Tensor | None]]:
        for start in range(0, 32, 16):
            yield {"numeric": numeric[start:start + 16]}, None

    return MergeTask(name=name, head=nn.Linear(HIDDEN[-1], 2), kind=kind, batches=batches)


def _setup() -> tuple[StateDict, dict[str, StateDict], MergeData]:
    torch.manual_seed(0)
    base = dict(MLPBackbone(4, [], HIDDEN).state_dict())
    experts = {}
    for i, name in enumerate(["a", "b"]):
        generator = torch.Generator().manual_seed(i + 1)
        experts[name] = {k: v + 0.5 * torch.randn(v.shape, generator=generator)
                         for k, v in base.items()}
    data = MergeData(backbone=_backbone, tasks={n: _task(n, i + 5) for i, n in enumerate("ab")})
    return base, experts, data


def _l1_to_experts(merged: StateDict, experts: dict[str, StateDict], data: MergeData
                   ) -> dict[str, float]:
    net = _backbone(backbone_state(merged))
    distances = {}
    with torch.no_grad():
        for name, task in data.tasks.items():
            weights = surgery_state(merged, name)
            module = RepresentationSurgery(HIDDEN[-1], weights["down.weight"].shape[0])
            module.load_state_dict(weights)
            expert = _backbone(experts[name])
            values = [float((module(net(x)) - expert(x)).abs().mean()) for x, _ in task.batches()]
            distances[name] = sum(values) / len(values)
    return distances


def test_surgery_reduces_the_l1_distance_to_the_experts_features() -> None:
    base, experts, data = _setup()
    untrained = merge.get("surgery", rank=4, steps=0).merge(base, experts, data)
    trained = merge.get("surgery", rank=4, lr=0.01, steps=150).merge(base, experts, data)
    before, after = _l1_to_experts(untrained, experts, data), _l1_to_experts(trained, experts,
                                                                              data)
    for name in experts:
        assert after[name] < 0.8 * before[name]


def test_result_is_the_base_merge_plus_surgery_entries() -> None:
    base, experts, data = _setup()
    merger = merge.get("surgery", base_method="task_arithmetic", base_options={"scale": 0.5},
                       rank=3, steps=2)
    merged = merger.merge(base, experts, data)
    expected = merge.get("task_arithmetic", scale=0.5).merge(base, experts)
    extras = {f"surgery.{t}.{p}" for t in experts for p in ("down.weight", "up.weight")}
    assert set(merged) == set(expected) | extras
    for key in expected:
        torch.testing.assert_close(merged[key], expected[key])
    assert merged["surgery.a.down.weight"].shape == (3, HIDDEN[-1])
    assert any("L1 distance" in line for line in merger.report())


def test_a_fresh_surgery_module_is_the_identity() -> None:
    features = torch.randn(5, 7)
    torch.testing.assert_close(RepresentationSurgery(7, 2)(features), features)


def test_wrap_heads_round_trips_the_surgery_state() -> None:
    base, experts, data = _setup()
    merged = merge.get("surgery", rank=2, lr=0.01, steps=20).merge(base, experts, data)
    heads = nn.ModuleDict({"a": nn.Linear(HIDDEN[-1], 2), "b": nn.Linear(HIDDEN[-1], 2),
                           "plain": nn.Linear(HIDDEN[-1], 2)})
    originals = {name: head for name, head in heads.items()}
    wrap_heads(heads, merged)
    assert heads["plain"] is originals["plain"]
    features = torch.randn(4, HIDDEN[-1])
    for name in ("a", "b"):
        surgery, head = heads[name]
        assert head is originals[name]
        for key, value in surgery_state(merged, name).items():
            torch.testing.assert_close(surgery.state_dict()[key], value)
        expected = originals[name](features - merged[f"surgery.{name}.up.weight"].matmul(
            torch.relu(merged[f"surgery.{name}.down.weight"] @ features.T)).T)
        torch.testing.assert_close(heads[name](features), expected)


def test_surgery_composes_with_partial_zipit() -> None:
    base, experts, data = _setup()
    merged = merge.get("surgery", base_method="zipit", base_options={"layers": 1},
                       rank=2, steps=3).merge(base, experts, data)
    assert "zipit.a.mlp.2.weight" in merged and "surgery.b.up.weight" in merged


def test_bad_input_is_a_clear_error() -> None:
    base, experts, _ = _setup()
    with pytest.raises(ConfigError, match="needs data"):
        merge.get("surgery").merge(base, experts, None)
    with pytest.raises(ConfigError, match="cannot be 'surgery'"):
        merge.get("surgery", base_method="surgery")
    with pytest.raises(ConfigError, match=r"base_method.*Did you mean 'task_arithmetic'"):
        merge.get("surgery", base_method="task_arithmetik")
