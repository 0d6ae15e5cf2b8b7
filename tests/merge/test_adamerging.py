"""AdaMerging on a tiny MLP backbone: entropy goes down, fixed λ is task arithmetic."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from polytask import merge
from polytask.errors import ConfigError
from polytask.merge import MergeData, MergeTask, StateDict
from polytask.merge.adamerging import prediction_entropy
from polytask.models.backbones import MLPBackbone
from polytask.tasks.kinds import Classification, Regression
from polytask.tasks.spec import Task

HIDDEN = [8, 8]


def _backbone(state: StateDict) -> nn.Module:
    module = MLPBackbone(4, [], HIDDEN)
    module.load_state_dict(state)
    return module.eval()


def _state(seed: int) -> StateDict:
    torch.manual_seed(seed)
    return dict(MLPBackbone(4, [], HIDDEN).state_dict())


def _expert(base: StateDict, seed: int) -> StateDict:
    generator = torch.Generator().manual_seed(seed)
    return {k: v + 0.3 * torch.randn(v.shape, generator=generator) for k, v in base.items()}


def _task(name: str, seed: int, kind: str = "classification") -> MergeTask:
    if kind == "classification":
        task_kind = Classification(Task(name=name, kind=kind, input="x", label="y"))
        task_kind.load_state({"labels": ["a", "b", "c"]})
    else:
        task_kind = Regression(Task(name=name, kind=kind, input="x", label="y"))
    generator = torch.Generator().manual_seed(seed)
    numeric = torch.randn(24, 4, generator=generator)
    torch.manual_seed(seed)
    head = nn.Linear(HIDDEN[-1], 3 if kind == "classification" else 1)

    def batches() -> Iterator[tuple[dict[str, Tensor], Tensor | None]]:
        for start in range(0, 24, 8):
            yield {"numeric": numeric[start:start + 8]}, None

    return MergeTask(name=name, head=head, kind=task_kind, batches=batches)


def _setup(kinds: dict[str, str] | None = None) -> tuple[StateDict, dict[str, StateDict],
                                                          MergeData]:
    kinds = kinds or {"a": "classification", "b": "classification"}
    base = _state(0)
    experts = {name: _expert(base, i + 1) for i, name in enumerate(kinds)}
    tasks = {name: _task(name, i + 10, kind) for i, (name, kind) in enumerate(kinds.items())}
    return base, experts, MergeData(backbone=_backbone, tasks=tasks)


def _mean_entropy(state: StateDict, data: MergeData) -> float:
    net = _backbone(state)
    values = []
    with torch.no_grad():
        for task in data.tasks.values():
            for inputs, _ in task.batches():
                entropy = prediction_entropy(task.kind, task.head(net(inputs)), inputs)
                assert entropy is not None
                values.append(float(entropy))
    return sum(values) / len(values)


@pytest.mark.parametrize("granularity", ["task", "layer"])
def test_learned_coefficients_lower_the_entropy(granularity: str) -> None:
    base, experts, data = _setup()
    learned = merge.get("adamerging", granularity=granularity, lr=0.05, steps=40)
    merged = learned.merge(base, experts, data)
    initial = merge.get("task_arithmetic", scale=0.3).merge(base, experts)
    assert _mean_entropy(merged, data) < _mean_entropy(initial, data) - 1e-3


@pytest.mark.parametrize("init", [0.3, 0.7])
def test_fixed_coefficients_equal_task_arithmetic(init: float) -> None:
    base, experts, data = _setup()
    fixed = merge.get("adamerging", init=init, steps=0).merge(base, experts, data)
    arithmetic = merge.get("task_arithmetic", scale=init).merge(base, experts)
    assert fixed.keys() == arithmetic.keys()
    for key in fixed:
        torch.testing.assert_close(fixed[key], arithmetic[key])


def test_layer_granularity_has_one_coefficient_per_task_per_layer() -> None:
    base, experts, data = _setup()
    merger = merge.get("adamerging", granularity="layer", lr=0.05, steps=5)
    merger.merge(base, experts, data)
    assert set(merger.coefficients) == {"a", "b"}
    for values in merger.coefficients.values():
        assert set(values) == set(base)
        assert all(0.0 <= v <= 1.0 for v in values.values())
    assert len({round(v, 6) for v in merger.coefficients["a"].values()}) > 1
    task_wise = merge.get("adamerging", granularity="task", steps=1)
    task_wise.merge(base, experts, data)
    assert all(set(v) == {"*"} for v in task_wise.coefficients.values())


def test_report_names_the_split_and_the_coefficients() -> None:
    base, experts, data = _setup()
    data.unlabelled_split = "test"
    merger = merge.get("adamerging", granularity="task", steps=2)
    merger.merge(base, experts, data)
    report = "\n".join(merger.report())
    assert "'test' split" in report and "λ[a]" in report and "λ[b]" in report


def test_regression_task_is_skipped_with_its_coefficient_kept() -> None:
    base, experts, data = _setup({"a": "classification", "r": "regression"})
    merger = merge.get("adamerging", granularity="task", lr=0.05, steps=10)
    merger.merge(base, experts, data)
    assert merger.coefficients["r"]["*"] == pytest.approx(0.3)
    assert merger.coefficients["a"]["*"] != pytest.approx(0.3)
    assert any("'r'" in line and "no entropy term" in line for line in merger.report())


def test_only_regression_tasks_is_a_clear_error() -> None:
    base, experts, data = _setup({"r": "regression", "s": "regression"})
    with pytest.raises(ConfigError, match="no task has predictions"):
        merge.get("adamerging", steps=1).merge(base, experts, data)


def test_without_data_is_a_clear_error() -> None:
    base, experts, _ = _setup()
    with pytest.raises(ConfigError, match="needs data"):
        merge.get("adamerging").merge(base, experts, None)


def test_bad_hyperparameters_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="granularity"):
        merge.get("adamerging", granularity="block")
    with pytest.raises(ConfigError, match="init"):
        merge.get("adamerging", init=1.5)
