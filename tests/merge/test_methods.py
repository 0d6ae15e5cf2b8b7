"""The registered merging methods on tiny random backbones: properties and bad input."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from polytask import merge
from polytask.errors import ConfigError
from polytask.merge import MergeData, MergeTask, StateDict
from polytask.merge import functional as Fm
from polytask.tasks.kinds import Classification, Regression
from polytask.tasks.spec import Task


class TinyBackbone(nn.Module):
    """An embedding, a LayerNorm, two linears and an integer buffer: every fallback case."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 4)
        self.norm = nn.LayerNorm(4)
        self.first = nn.Linear(8, 6)
        self.second = nn.Linear(6, 3)
        self.register_buffer("position_ids", torch.arange(3))

    def forward(self, inputs: dict[str, Tensor], level: str = "sequence") -> Tensor:
        del level
        x = torch.cat([self.norm(self.embed(inputs["ids"])), inputs["x"]], dim=-1)
        return self.second(torch.relu(self.first(x)))


def _state(seed: int) -> StateDict:
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in TinyBackbone().state_dict().items()}


def _perturbed(base: StateDict, seed: int, size: float = 0.1) -> StateDict:
    generator = torch.Generator().manual_seed(seed)
    return {k: v + size * torch.randn(v.shape, generator=generator) if v.is_floating_point()
            else v.clone() for k, v in base.items()}


def _backbone(state: StateDict) -> nn.Module:
    module = TinyBackbone()
    module.load_state_dict(state)
    return module


def _task(name: str, kind: str = "classification", rows: int = 12) -> MergeTask:
    spec = Task(name=name, kind=kind, input="x", label="y",
                labels=["a", "b"] if kind == "classification" else None)
    task_kind = Classification(spec) if kind == "classification" else Regression(spec)
    if kind == "classification":
        task_kind.load_state({"labels": ["a", "b"]})
    generator = torch.Generator().manual_seed(len(name))
    inputs = {"ids": torch.randint(0, 5, (rows,), generator=generator),
              "x": torch.randn(rows, 4, generator=generator)}
    labels = torch.randint(0, 2, (rows,), generator=generator)

    def batches() -> Iterator[tuple[dict[str, Tensor], Tensor | None]]:
        for start in range(0, rows, 5):
            yield {k: v[start:start + 5] for k, v in inputs.items()}, labels[start:start + 5]

    head = nn.Linear(3, 2 if kind == "classification" else 1)
    return MergeTask(name=name, head=head, kind=task_kind, batches=batches)


def _data(*names: str) -> MergeData:
    return MergeData(backbone=_backbone, tasks={n: _task(n) for n in names})


def _assert_states_close(left: StateDict, right: StateDict, atol: float = 1e-6) -> None:
    assert left.keys() == right.keys()
    for key in left:
        assert torch.allclose(left[key].float(), right[key].float(), atol=atol), key


ALL_METHODS = ["average", "task_arithmetic", "ties", "dare", "fisher", "regmean"]


@pytest.mark.parametrize("name", ALL_METHODS)
def test_identical_experts_merge_to_that_expert(name: str) -> None:
    base = _state(0)
    expert = _perturbed(base, 1)
    options: dict[str, float] = {
        "task_arithmetic": {"scale": 0.5},  # a sum of two task vectors
        "dare": {"density": 1.0, "scale": 0.5},  # combine="linear" sums too
        "ties": {"density": 1.0, "scale": 1.0},  # a disjoint mean
    }.get(name, {})
    merger = merge.get(name, **options)
    experts = {"a": expert, "b": {k: v.clone() for k, v in expert.items()}}
    _assert_states_close(merger.merge(base, experts, _data("a", "b")), expert, atol=1e-5)


def test_task_arithmetic_with_zero_scale_is_the_base() -> None:
    base = _state(0)
    merged = merge.get("task_arithmetic", scale=0.0).merge(
        base, {"a": _perturbed(base, 1), "b": _perturbed(base, 2)})
    _assert_states_close(merged, base, atol=0.0)


def test_average_is_task_arithmetic_with_one_over_n() -> None:
    base = _state(0)
    experts = {"a": _perturbed(base, 1), "b": _perturbed(base, 2), "c": _perturbed(base, 3)}
    _assert_states_close(merge.get("average").merge(base, experts),
                         merge.get("task_arithmetic", scale=1 / 3).merge(base, experts))


def test_dare_is_seeded() -> None:
    base = _state(0)
    experts = {"a": _perturbed(base, 1), "b": _perturbed(base, 2)}
    first = merge.get("dare", density=0.3, seed=4).merge(base, experts)
    _assert_states_close(first, merge.get("dare", density=0.3, seed=4).merge(base, experts), 0)
    other = merge.get("dare", density=0.3, seed=5).merge(base, experts)
    assert not torch.equal(first["first.weight"], other["first.weight"])


def test_regmean_with_one_expert_returns_it() -> None:
    base = _state(0)
    expert = _perturbed(base, 1)
    merged = merge.get("regmean", alpha=0.5).merge(base, {"a": expert}, _data("a"))
    _assert_states_close(merged, expert, atol=1e-5)


def test_regmean_merges_linear_weights_from_the_experts_grams() -> None:
    base = _state(0)
    experts = {"a": _perturbed(base, 1), "b": _perturbed(base, 2)}
    data = _data("a", "b")
    merger = merge.get("regmean", alpha=0.7, ridge=0.0)
    merged = merger.merge(base, experts, data)
    grams = [merger.grams(data, data.tasks[n], experts[n])["first.weight"] for n in experts]
    expected = Fm.regmean([experts[n]["first.weight"] for n in experts], grams, alpha=0.7)
    assert torch.allclose(merged["first.weight"], expected, atol=1e-6)
    average = merge.get("average").merge(base, experts)
    for key in ("first.bias", "embed.weight", "norm.weight"):
        assert torch.allclose(merged[key], average[key])
    assert torch.equal(merged["position_ids"], base["position_ids"])
    assert any("averaged" in line and "nn.Linear" in line for line in merger.report())


def test_regmean_gram_is_the_mean_outer_product_of_the_layer_inputs() -> None:
    base = _state(0)
    data = _data("a")
    backbone = _backbone(base)
    captured: list[Tensor] = []
    backbone.second.register_forward_hook(lambda m, args, out: captured.append(args[0]))
    with torch.no_grad():
        for inputs, _ in data.tasks["a"].batches():
            backbone(inputs)
    rows = torch.cat(captured).double()
    gram = merge.get("regmean").grams(data, data.tasks["a"], base)["second.weight"]
    assert torch.allclose(gram, rows.T @ rows / rows.shape[0])


def test_fisher_with_equal_fishers_is_the_average() -> None:
    base = _state(0)
    experts = {"a": _perturbed(base, 1), "b": _perturbed(base, 2)}
    merger = merge.get("fisher", examples=4)
    fishers = {n: merger.fisher(_data(n), _data(n).tasks[n], base) for n in experts}
    assert fishers["a"]["first.weight"].any()
    equal = {"a": fishers["a"], "b": fishers["a"]}
    weighted = {k: merger._weighted(k, experts, equal) for k in fishers["a"]}
    average = merge.get("average").merge(base, experts)
    for key, value in weighted.items():
        assert torch.allclose(value, average[key], atol=1e-6), key


def test_fisher_weights_each_entry_towards_the_expert_with_more_information() -> None:
    base = _state(0)
    experts = {"a": _perturbed(base, 1), "b": _perturbed(base, 2)}
    merger = merge.get("fisher", epsilon=0.0)
    ones = {k: torch.ones_like(v) for k, v in base.items()}
    fishers = {"a": {k: 3 * v for k, v in ones.items()}, "b": ones}
    merged = merger._weighted("first.weight", experts, fishers)
    expected = 0.75 * experts["a"]["first.weight"] + 0.25 * experts["b"]["first.weight"]
    assert torch.allclose(merged, expected)


def test_fisher_on_regression_uses_a_gaussian_likelihood() -> None:
    """With y ~ N(f(x), 1), the squared gradient of log p(y | x) is ε² (∂f/∂θ)²: nonzero
    wherever the output depends on θ (the predicted value itself would give 0)."""
    base = _state(0)
    data = MergeData(backbone=_backbone, tasks={"r": _task("r", kind="regression")})
    fisher = merge.get("fisher", examples=6).fisher(data, data.tasks["r"], base)
    assert fisher["second.weight"].any() and fisher["first.weight"].any()
    assert not fisher["second.weight"].lt(0).any()


# -- bad input ---------------------------------------------------------------------------
def test_an_expert_missing_a_parameter_is_named() -> None:
    base = _state(0)
    broken = _perturbed(base, 1)
    del broken["norm.bias"]
    with pytest.raises(ConfigError, match=r"expert 'b' has no parameter 'norm.bias'"):
        merge.get("ties").merge(base, {"a": _perturbed(base, 2), "b": broken})


def test_an_expert_with_another_shape_is_named() -> None:
    base = _state(0)
    broken = _perturbed(base, 1)
    broken["first.weight"] = torch.zeros(6, 9)
    with pytest.raises(ConfigError, match=r"expert 'a' parameter 'first.weight' has shape"):
        merge.get("average").merge(base, {"a": broken})


def test_an_expert_with_an_extra_parameter_is_named() -> None:
    base = _state(0)
    broken = {**_perturbed(base, 1), "third.weight": torch.zeros(2)}
    with pytest.raises(ConfigError, match=r"'third.weight' that the base does not have"):
        merge.get("average").merge(base, {"a": broken})


@pytest.mark.parametrize("name", ["ties", "dare"])
@pytest.mark.parametrize("density", [0.0, 1.01, -1.0])
def test_density_outside_the_unit_interval(name: str, density: float) -> None:
    with pytest.raises(ConfigError, match=r"density=.* outside \(0, 1\]"):
        merge.get(name, density=density)


def test_unknown_method_suggests_the_nearest() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'ties'"):
        merge.get("tie")


def test_unknown_hyperparameter_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown hyperparameter 'lambda'.*scale"):
        merge.get("task_arithmetic", **{"lambda": 0.3})


@pytest.mark.parametrize("name", ["fisher", "regmean"])
def test_a_data_driven_method_without_data(name: str) -> None:
    base = _state(0)
    with pytest.raises(ConfigError, match="needs data"):
        merge.get(name).merge(base, {"a": _perturbed(base, 1)})


def test_an_expert_without_merge_data_is_named() -> None:
    base = _state(0)
    with pytest.raises(ConfigError, match="expert 'b' has no merge data"):
        merge.get("regmean").merge(base, {"a": _perturbed(base, 1), "b": _perturbed(base, 2)},
                                   _data("a"))


def test_every_method_has_a_paper_and_a_grid_of_its_own_keywords() -> None:
    import inspect

    for name in ALL_METHODS:
        cls = merge.MERGERS.get(name)
        parameters = inspect.signature(cls).parameters
        assert set(cls.grid) <= set(parameters), name
        info = next(i for i in merge.MERGERS.info() if i.name == name)
        assert info.paper and info.summary
