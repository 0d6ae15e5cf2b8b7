"""Every registered balancer on a tiny model: what lands in `.grad`, and checkpointing."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch

import polytask.balance as balance
from polytask.balance.jacobian import task_jacobian

from .helpers import AsAggregator, TinyMultiTask, batch, flat_grads, is_gradient_method

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
    weights = balance.backward(losses, model.shared(), b, features,
                               task_params=model.task_params()).weights
    assert set(weights) <= set(NAMES)
    shared, heads = flat_grads(model.shared()), flat_grads(model.task_params())
    assert torch.isfinite(shared).all() and shared.abs().sum() > 0
    assert torch.isfinite(heads).all() and heads.abs().sum() > 0

    model.zero_grad()
    losses, _ = model.losses(x, y)
    vector = torch.stack([losses[n] for n in NAMES])
    expected_heads = torch.autograd.grad(vector.sum(), model.task_params(), retain_graph=True)
    if is_gradient_method(name) and name != "m_config":
        jacobian = task_jacobian(vector, model.shared())
        expected = AsAggregator(build(name).method).aggregate(jacobian)
        assert torch.allclose(shared, expected, rtol=1e-4, atol=1e-6)
        assert torch.allclose(heads, torch.cat([g.flatten() for g in expected_heads]))
    elif len(weights) == len(NAMES):
        w = torch.tensor([weights[n] for n in NAMES])
        expected = torch.autograd.grad((w * vector).sum(), model.shared(), retain_graph=True)
        assert torch.allclose(shared, torch.cat([g.flatten() for g in expected]), rtol=1e-4)
    else:  # one task per step (M-ConFIG): the first step is the first task's gradient alone
        assert weights == {}
        expected = torch.autograd.grad(losses[NAMES[0]], model.shared(), retain_graph=True)
        assert torch.allclose(shared, torch.cat([g.flatten() for g in expected]), rtol=1e-4)


@pytest.mark.parametrize("name", balance.names())
def test_state_dict_survives_a_checkpoint(name: str) -> None:
    model = TinyMultiTask()
    x, y = batch()
    b = build(name)
    for _ in range(2):
        losses, features = model.losses(x, y)
        balance.backward(losses, model.shared(), b, features, task_params=model.task_params())
        b.after_step(lambda: model.losses(x, y)[0])
    buffer = io.BytesIO()
    torch.save(b.state_dict(), buffer)
    buffer.seek(0)
    restored = build(name, seed=1)
    restored.load_state_dict(torch.load(buffer))
    model.zero_grad()
    losses, features = model.losses(x, y)
    first = balance.backward(losses, model.shared(), b, features,
                             task_params=model.task_params()).weights
    grads = flat_grads(model.shared())
    model.zero_grad()
    losses, features = model.losses(x, y)
    second = balance.backward(losses, model.shared(), restored, features,
                              task_params=model.task_params()).weights
    assert first == pytest.approx(second)
    assert torch.allclose(grads, flat_grads(model.shared()))


def test_the_deprecated_backward_still_fills_the_gradients() -> None:
    """The hand-written loop of earlier versions: `balancer.backward(losses, shared)`."""
    model = TinyMultiTask()
    x, y = batch()
    b = build("pcgrad")
    with pytest.warns(DeprecationWarning, match="Balancer.backward is deprecated"):
        weights = b.backward(model.losses(x, y)[0], model.shared())
    first = flat_grads(model.shared())
    model.zero_grad()
    result = balance.backward(model.losses(x, y)[0], model.shared(), build("pcgrad"))
    assert weights == pytest.approx(result.weights)
    assert torch.equal(first, flat_grads(model.shared()))


def test_unknown_name_suggests() -> None:
    with pytest.raises(KeyError, match="pcgrad"):
        balance.get("pcgard")
