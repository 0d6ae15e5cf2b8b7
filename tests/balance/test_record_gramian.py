"""`BalanceResult.gramian`: every method that sees per-task gradients returns their Gramian
when asked, and none is returned when not asked."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import polytask.balance as balance
from polytask.balance.base import LossWeighting
from polytask.balance.jacobian import task_jacobian

from .helpers import TinyMultiTask, batch

NAMES = ["t0", "t1", "t2"]
#: methods that never see per-task gradients of the shared parameters
WEIGHTINGS = {
    n for n in balance.names()
    if issubclass(balance.BALANCERS.get(n), LossWeighting) or n == "gradnorm"
}
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    *((n, {}) for n in balance.names()),
    ("mgda", {"representation": True}),
    ("graddrop", {"representation": True}),
    ("pcgrad", {"sparse": 0.5}),
    ("graddrop", {"sparse": 0.5}),
    ("upgrad", {"sam_rho": 0.05}),
    ("nash_mtl", {"update_every": 2}),
    ("mgda", {"representation": True, "update_every": 2}),
]


def build(name: str, options: dict[str, Any]) -> balance.Balancer:
    kwargs = dict(options)
    if name == "fixed":
        kwargs["weights"] = {n: 1.0 for n in NAMES}
    b = balance.get(name, **kwargs)
    b.setup(NAMES)
    return b


def expected_gramian(
    model: TinyMultiTask, x: torch.Tensor, y: torch.Tensor, rep: bool
) -> torch.Tensor:
    losses, features = model.losses(x, y)
    vector = torch.stack([losses[n] for n in NAMES])
    jacobian = task_jacobian(vector, [features] if rep else model.shared())
    return jacobian @ jacobian.T


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=lambda v: str(v))
def test_last_gramian_when_recording(name: str, options: dict[str, Any]) -> None:
    model = TinyMultiTask()
    b = build(name, options)
    for step in range(3):  # update_every=2 computes at steps 0 and 2, reuses at step 1
        x, y = batch(seed=step)
        b.set_closure(lambda x=x, y=y: model.losses(x, y)[0])
        model.zero_grad()
        losses, features = model.losses(x, y)
        gramian = balance.backward(losses, model.shared(), b, features,
                                   task_params=model.task_params(), gramian=True).gramian
        b.after_step(lambda x=x, y=y: model.losses(x, y)[0])
        if name in WEIGHTINGS:
            assert gramian is None
            continue
        assert gramian is not None, f"step {step}"
        expected = expected_gramian(model, x, y, bool(options.get("representation")))
        assert gramian.shape == (3, 3)
        assert torch.allclose(gramian, expected, rtol=1e-4, atol=1e-8), f"step {step}"


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=lambda v: str(v))
def test_no_gramian_when_not_asked(name: str, options: dict[str, Any]) -> None:
    model = TinyMultiTask()
    b = build(name, options)
    x, y = batch()
    b.set_closure(lambda: model.losses(x, y)[0])
    losses, features = model.losses(x, y)
    result = balance.backward(losses, model.shared(), b, features,
                              task_params=model.task_params())
    assert result.gramian is None
