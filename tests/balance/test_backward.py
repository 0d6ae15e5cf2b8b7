"""Every registered balancer on a tiny model: what lands in `.grad`, and checkpointing."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch

import polytask.balance as balance
from polytask.balance.base import GradientAggregator
from polytask.balance.jacobian import task_jacobian

from .helpers import TinyMultiTask, batch, flat_grads

NAMES = ["t0", "t1", "t2"]
KWARGS: dict[str, dict[str, Any]] = {
    "fixed": {"weights": {n: 1.0 + i for i, n in enumerate(NAMES)}},
}


def build(name: str, seed: int = 0) -> balance.Balancer:
    kwargs = dict(KWARGS.get(name, {}))
    if "generator" in balance.BALANCERS.get(name).__init__.__code__.co_varnames:
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    b = balance.get(name, **kwargs)
    b.setup(NAMES)
    return b


@pytest.mark.parametrize("name", balance.names())
def test_backward_fills_shared_and_task_gradients(name: str) -> None:
    model = TinyMultiTask()
    x, y = batch()
    losses, features = model.losses(x, y)
    b = build(name)
    weights = b.backward(losses, model.shared(), features, model.task_params())
    assert set(weights) <= set(NAMES)
    shared, heads = flat_grads(model.shared()), flat_grads(model.task_params())
    assert torch.isfinite(shared).all() and shared.abs().sum() > 0
    assert torch.isfinite(heads).all() and heads.abs().sum() > 0

    model.zero_grad()
    losses, _ = model.losses(x, y)
    vector = torch.stack([losses[n] for n in NAMES])
    expected_heads = torch.autograd.grad(vector.sum(), model.task_params(), retain_graph=True)
    if isinstance(b, GradientAggregator):
        jacobian = task_jacobian(vector, model.shared())
        expected = build(name).aggregate(jacobian)
        assert torch.allclose(shared, expected, rtol=1e-4, atol=1e-6)
        assert torch.allclose(heads, torch.cat([g.flatten() for g in expected_heads]))
    elif len(weights) == len(NAMES):
        w = torch.tensor([weights[n] for n in NAMES])
        expected = torch.autograd.grad((w * vector).sum(), model.shared(), retain_graph=True)
        assert torch.allclose(shared, torch.cat([g.flatten() for g in expected]), rtol=1e-4)
    else:  # one task per step (M-ConFIG): the first step is the first task's gradient alone
        assert weights == pytest.approx({NAMES[0]: 1.0})
        expected = torch.autograd.grad(losses[NAMES[0]], model.shared(), retain_graph=True)
        assert torch.allclose(shared, torch.cat([g.flatten() for g in expected]), rtol=1e-4)


@pytest.mark.parametrize("name", balance.names())
def test_state_dict_survives_a_checkpoint(name: str) -> None:
    model = TinyMultiTask()
    x, y = batch()
    b = build(name)
    for _ in range(2):
        losses, features = model.losses(x, y)
        b.backward(losses, model.shared(), features, model.task_params())
        b.after_step(lambda: model.losses(x, y)[0])
    buffer = io.BytesIO()
    torch.save(b.state_dict(), buffer)
    buffer.seek(0)
    restored = build(name, seed=1)
    restored.load_state_dict(torch.load(buffer))
    model.zero_grad()
    losses, features = model.losses(x, y)
    first = b.backward(losses, model.shared(), features, model.task_params())
    grads = flat_grads(model.shared())
    model.zero_grad()
    losses, features = model.losses(x, y)
    second = restored.backward(losses, model.shared(), features, model.task_params())
    assert first == pytest.approx(second)
    assert torch.allclose(grads, flat_grads(model.shared()))


def test_unknown_name_suggests() -> None:
    with pytest.raises(KeyError, match="pcgrad"):
        balance.get("pcgard")
