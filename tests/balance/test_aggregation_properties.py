"""Properties every gradient aggregator must have, checked by one shared helper over seeded
random matrices of controlled rank and scale (1e-8 ... 1e8)."""

from __future__ import annotations

import pkgutil

import pytest
import torch
from torch import Tensor

import polytask.balance as balance
from polytask.balance import aggregation
from polytask.balance.base import LossWeighting

from .helpers import AsAggregator, is_gradient_method, random_jacobian

#: M-ConFIG maps one task's gradient per step to an update (checked in test_backward.py)
AGGREGATORS = sorted(n for n in balance.names() if is_gradient_method(n) and n != "m_config")
#: Methods whose result depends on a random visiting order of the tasks.
ORDER_RANDOM = {"pcgrad", "gradvac"}
#: (tasks, dim, rank, scale, seed)
MATRICES = [
    (2, 7, 2, 1.0, 0),
    (3, 12, 3, 1e-8, 1),
    (4, 20, 2, 1e8, 2),
    (5, 9, 5, 1.0, 3),
    (6, 30, 1, 1e3, 4),
]


def fresh(name: str) -> AsAggregator:
    return AsAggregator(balance.get(name, **({"generator": torch.Generator().manual_seed(0)}
                                             if "generator" in _params(name) else {})).method)


def _params(name: str) -> tuple[str, ...]:
    return balance.BALANCERS.get(name).__init__.__code__.co_varnames


def close(a: Tensor, b: Tensor, scale: float, tol: float = 1e-6) -> bool:
    return bool(((a - b).abs() <= tol * (scale + b.abs())).all())


def check_aggregator(name: str, jacobian: Tensor) -> Tensor:
    """Shape, finiteness, positive homogeneity, permutation invariance, zero/duplicate rows."""
    t, p = jacobian.shape
    size = float(jacobian.norm(dim=1).max())
    out = fresh(name).aggregate(jacobian)
    assert out.shape == (p,)
    assert torch.isfinite(out).all()
    # positive homogeneity: no hidden absolute tolerance
    for s in (1e-3, 1e3):
        assert close(fresh(name).aggregate(s * jacobian) / s, out, size), f"{name} scale {s}"
    if name not in ORDER_RANDOM or t == 2:
        perm = torch.randperm(t, generator=torch.Generator().manual_seed(5))
        assert close(fresh(name).aggregate(jacobian[perm]), out, size), f"{name} permutation"
    with_zero = torch.cat([jacobian, torch.zeros(1, p, dtype=jacobian.dtype)])
    assert torch.isfinite(fresh(name).aggregate(with_zero)).all()
    duplicated = torch.cat([jacobian, jacobian[:1]])
    assert torch.isfinite(fresh(name).aggregate(duplicated)).all()
    assert (fresh(name).aggregate(torch.zeros_like(jacobian)) == 0).all()
    return out


@pytest.mark.parametrize("name", AGGREGATORS)
@pytest.mark.parametrize("spec", MATRICES, ids=lambda s: f"T{s[0]}r{s[2]}s{s[3]:g}")
def test_aggregator_properties(name: str, spec: tuple[int, int, int, float, int]) -> None:
    check_aggregator(name, random_jacobian(*spec))


#: Balancers that are neither a loss weighting nor a map from the task Jacobian to an update,
#: so the property helper cannot run on them; each is checked by the test named.
NOT_JACOBIAN_MAPS = {
    "gradnorm": "test_weighting.py::test_gradnorm_downweights_the_task_with_the_larger_gradient",
    "m_config": "test_backward.py::test_backward_fills_shared_and_task_gradients",
}


def test_every_aggregator_is_covered() -> None:
    """Every registered balancer that is not a loss weighting runs through the property
    helper (it is in the parameter list of `test_aggregator_properties`), unless it is one of
    the named exceptions; every aggregation module registers a covered method."""
    [covered] = [mark.args[1] for mark in test_aggregator_properties.pytestmark
                 if mark.args[0] == "name"]
    registered = set(balance.names())
    assert set(NOT_JACOBIAN_MAPS) <= registered
    for name in sorted(registered - set(NOT_JACOBIAN_MAPS)):
        method = balance.BALANCERS.get(name)
        assert issubclass(method, LossWeighting) or name in covered, (
            f"{name} is registered but not in the aggregator property test")
    modules = {info.name for info in pkgutil.iter_modules(aggregation.__path__)}
    covered_modules = {balance.BALANCERS.get(name).__module__.rsplit(".", 1)[1]
                       for name in [*covered, *NOT_JACOBIAN_MAPS]}
    assert modules <= covered_modules, f"not covered: {sorted(modules - covered_modules)}"
