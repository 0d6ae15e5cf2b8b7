"""The unfolded (im2col) Gramian path of convolutions agrees with explicit per-task
gradients, and convolutions it does not apply to fall back (and say so in the debug log)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import Tensor, nn

from polytask.balance import gramian as gramian_module
from polytask.balance.gramian import TaskGradients, find_linear_layers
from polytask.balance.jacobian import task_jacobian

from .helpers import flat_grads


class ConvNet(nn.Module):
    """Two convolutions (with and without bias, strided, padded, dilated), a linear layer,
    and T linear heads."""

    def __init__(self, tasks: int, groups: int = 1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(2, 4, 3, padding=1, stride=2)
        self.b = nn.Conv2d(4, 6, (3, 2), dilation=(1, 2), bias=False, groups=groups)
        self.fc = nn.Linear(6 * 3 * 3, 8)
        self.heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(tasks))

    def shared(self) -> list[nn.Parameter]:
        return [*self.a.parameters(), *self.b.parameters(), *self.fc.parameters()]

    def losses(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        h = torch.relu(self.b(h))
        h = torch.tanh(self.fc(h.flatten(1)))
        return torch.stack([(head(h) ** 2).mean() for head in self.heads])


def check_against_explicit(losses: Tensor, params: list[nn.Parameter],
                           grads: TaskGradients) -> None:
    jacobian = task_jacobian(losses, params)
    assert torch.allclose(grads.gramian(), jacobian @ jacobian.T, rtol=1e-5, atol=1e-5)
    assert torch.allclose(grads.jacobian(), jacobian, rtol=1e-5, atol=1e-5)
    w = torch.tensor([0.3, -1.0, 2.0][: len(losses)])
    grads.accumulate(w)
    assert torch.allclose(flat_grads(params), w @ jacobian, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [2, 64])
def test_unfolded_convolutions_match_explicit_gradients(
        batch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both factored forms (kernel; explicit T Z_tᵀ U) on strided, padded, dilated
    convolutions with and without bias."""
    net = ConvNet(tasks=3)
    x = torch.randn(batch, 2, 9, 10, generator=torch.Generator().manual_seed(1))
    losses = net.losses(x)
    params = net.shared()
    assert sum(layer.conv is not None for layer in find_linear_layers(losses, params)) == 2
    monkeypatch.setattr(gramian_module, "_use_kernel", lambda *_: True)  # unfold them
    grads = TaskGradients(losses, params)
    assert not grads.others  # every shared parameter is in a factored layer
    monkeypatch.setattr(gramian_module, "_use_kernel", lambda *_: False)  # explicit Z_tᵀ U
    check_against_explicit(losses, params, grads)


def test_convolutions_unfold_only_where_the_kernel_form_wins(
        caplog: pytest.LogCaptureFixture) -> None:
    """Many positions and few channels (the first layer): torch's own per-task weight
    gradients; few positions and many channels (a deep layer): the kernel form."""
    torch.manual_seed(0)
    wide, deep = nn.Conv2d(1, 32, 3), nn.Conv2d(32, 64, 3, stride=2)
    heads = [nn.Linear(64 * 3 * 3, 1) for _ in range(2)]
    x = torch.randn(2, 1, 9, 9)
    with caplog.at_level(logging.DEBUG, logger="polytask.balance.gramian"):
        features = torch.relu(deep(torch.relu(wide(x)))).flatten(1)
        losses = torch.stack([(head(features) ** 2).mean() for head in heads])
        params = [*wide.parameters(), *deep.parameters()]
        grads = TaskGradients(losses, params)
    assert [layer.weight is deep.weight for layer in grads.layers] == [True]
    assert {id(p) for p in grads.others} == {id(p) for p in wide.parameters()}
    assert "explicit per-task gradients cost less" in caplog.text
    check_against_explicit(losses, params, grads)


def test_grouped_and_oversized_convolutions_fall_back_and_log(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    net = ConvNet(tasks=2, groups=2)
    x = torch.randn(4, 2, 9, 10, generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(gramian_module, "_use_kernel", lambda *_: True)
    monkeypatch.setattr(gramian_module, "UNFOLD_ENTRIES", 100)  # the first conv: too large
    with caplog.at_level(logging.DEBUG, logger="polytask.balance.gramian"):
        losses = net.losses(x)
        params = net.shared()
        grads = TaskGradients(losses, params)
    assert [layer.conv for layer in grads.layers] == [None]  # only the linear layer
    assert "transposed or grouped" in caplog.text and "UNFOLD_ENTRIES" in caplog.text
    check_against_explicit(losses, params, grads)
