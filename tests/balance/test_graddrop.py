"""GradDrop's blocked path (from the factored per-task gradients) against the formula."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import polytask.balance as balance
import polytask.balance.gramian as gramian
from polytask.balance.aggregation.graddrop import _keep
from polytask.balance.gramian import TaskGradients
from polytask.balance.jacobian import task_jacobian

from .helpers import TinyMultiTask, batch, flat_grads

NAMES = ["t0", "t1", "t2"]


def reference(jacobian: Tensor, draw: Tensor) -> Tensor:
    """Chen et al. (2020), coordinate by coordinate: P = ½(1 + Σ g / Σ |g|); keep the
    positive entries where P > U and the negative ones where P < U; sum what is kept."""
    out = torch.zeros(jacobian.shape[1], dtype=jacobian.dtype)
    for j in range(jacobian.shape[1]):
        g = jacobian[:, j]
        magnitude = g.abs().sum()
        purity = 0.5 * (1 + g.sum() / magnitude) if magnitude > 0 else 0.5
        u = draw[j].to(jacobian.dtype)
        out[j] = (g * ((g > 0) & (purity > u))).sum() + (g * ((g < 0) & (purity < u))).sum()
    return out


def step(
    model: TinyMultiTask, method: balance.GradDrop, seed: int, dtype: torch.dtype
) -> tuple[dict[str, Tensor], Tensor]:
    x, y = batch(seed=seed)
    losses, features = model.losses(x.to(dtype), y.to(dtype))
    balance.backward(losses, model.shared(), method, features, task_params=model.task_params())
    return losses, features


def test_aggregate_matches_the_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    jacobian = torch.randn(4, 300, generator=gen, dtype=torch.float64)
    jacobian[:, :5] = 0  # zero columns: P = ½
    jacobian[:, 5:10] = jacobian[:, 5:10].abs()  # one sign only
    method = balance.GradDrop(generator=torch.Generator().manual_seed(3))
    state = method.generator.get_state()
    update = method.aggregate(jacobian)
    draw = torch.rand(300, generator=torch.Generator().set_state(state), dtype=torch.float64)
    assert torch.allclose(update, reference(jacobian, draw), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("block", [7, 50, None])
def test_backward_matches_the_formula(monkeypatch: pytest.MonkeyPatch, block: int | None) -> None:
    """The blocked backward against the formula on an autograd Jacobian, same draws
    (float64, so no purity lands near its draw by rounding); over several steps, with
    gradients already in `.grad` (it accumulates)."""
    if block is not None:
        monkeypatch.setattr(gramian, "BLOCK", block)
    model = TinyMultiTask(width=16).double()
    method = balance.GradDrop(generator=torch.Generator().manual_seed(5))
    method.setup(NAMES)
    for seed in range(3):
        for p in model.shared():
            p.grad = torch.full_like(p, 0.25)
        state = method.generator.get_state()
        losses, _ = step(model, method, seed, torch.float64)
        jacobian = task_jacobian([losses[n] for n in NAMES], model.shared())
        draw = torch.rand(
            jacobian.shape[1], generator=torch.Generator().set_state(state), dtype=torch.float64
        )
        expected = reference(jacobian, draw) + 0.25
        assert torch.allclose(flat_grads(model.shared()), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("block", [7, 50, None])
def test_backward_is_aggregate_of_the_jacobian_bit_for_bit(
    monkeypatch: pytest.MonkeyPatch, block: int | None
) -> None:
    """Block by block, `backward` does the arithmetic of `aggregate` on the whole matrix with
    the same draws (float32, the dtype where rounding could differ)."""
    if block is not None:
        monkeypatch.setattr(gramian, "BLOCK", block)
    model = TinyMultiTask(width=16)
    method = balance.GradDrop(generator=torch.Generator().manual_seed(7))
    twin = balance.GradDrop(generator=torch.Generator().manual_seed(7))
    method.setup(NAMES)
    for seed in range(3):
        model.zero_grad()
        losses, features = step(model, method, seed, torch.float32)
        fast = flat_grads(model.shared())
        gradients = TaskGradients([losses[n] for n in NAMES], model.shared(), features)
        assert torch.equal(fast, twin.aggregate(gradients.jacobian()))
        assert torch.equal(method.generator.get_state(), twin.generator.get_state())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_keep_is_where(dtype: torch.dtype) -> None:
    values = torch.tensor([1.5, -2.0, 0.0, -0.0, float("inf"), float("-inf"), float("nan"), 3.0])
    values = values.to(dtype)
    for mask in (torch.arange(8) % 2 == 0, torch.arange(8) % 3 == 0):
        kept = _keep(values, mask)
        expected = torch.where(mask, values, 0.0)
        assert kept.dtype == expected.dtype
        assert torch.equal(kept.view(torch.int8), expected.view(torch.int8)) or torch.equal(
            kept.nan_to_num(), expected.nan_to_num()
        )
