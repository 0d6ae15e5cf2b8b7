"""The factored Gramian path agrees with the explicit Jacobian on varied architectures."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from polytask.balance.gramian import TaskGradients, find_linear_layers
from polytask.balance.jacobian import cut_at_features, task_jacobian

from .helpers import flat_grads


class Net(nn.Module):
    def __init__(self, kind: str, d_in: int, width: int, tasks: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.a = nn.Linear(d_in, width, bias=kind != "nobias")
        self.b = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.heads = nn.ModuleList(nn.Linear(width, 1) for _ in range(tasks))

    def shared(self) -> list[nn.Parameter]:
        return [*self.a.parameters(), *self.b.parameters(), *self.norm.parameters()]

    def losses(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        h = torch.tanh(self.b(h))
        if self.kind == "tied":
            h = torch.tanh(self.b(h))  # the same layer twice: must not be factored
        h = self.norm(h)
        return torch.stack([(head(h) ** 2).mean() for head in self.heads])


CASES = [  # kind, input shape, d_in, width, layers expected to be factored
    ("plain", (6, 40), 40, 30, 2),  # d_in > B: kernel path
    ("plain", (50, 4), 4, 8, 2),  # d_in < B: explicit path
    ("nobias", (6, 40), 40, 30, 2),
    ("tied", (6, 40), 40, 30, 1),
    ("plain", (3, 5, 40), 40, 30, 2),  # 3-D input (tokens)
]


@pytest.mark.parametrize(("kind", "shape", "d_in", "width", "factored"), CASES)
def test_gramian_and_update_match_the_jacobian(
    kind: str, shape: tuple[int, ...], d_in: int, width: int, factored: int
) -> None:
    net = Net(kind, d_in, width, tasks=3)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    losses = net.losses(x)
    params = net.shared()
    assert len(find_linear_layers(losses, params)) == factored
    jacobian = task_jacobian(losses, params)
    grads = TaskGradients(losses, params)
    assert torch.allclose(grads.gramian(), jacobian @ jacobian.T, rtol=1e-4, atol=1e-6)
    w = torch.tensor([0.3, -1.0, 2.0])
    grads.accumulate(w)
    assert torch.allclose(flat_grads(params), w @ jacobian, rtol=1e-4, atol=1e-6)


def test_a_bias_outside_the_list_is_ignored() -> None:
    net = Net("plain", 40, 30, tasks=2)
    losses = net.losses(torch.randn(6, 40))
    only_b = [net.b.weight]  # b's bias is not a shared parameter here
    assert [layer.bias for layer in find_linear_layers(losses, only_b)] == [None]
    grads = TaskGradients(losses, only_b)
    jacobian = task_jacobian(losses, only_b)
    assert torch.allclose(grads.gramian(), jacobian @ jacobian.T, rtol=1e-4, atol=1e-6)


def test_the_cut_at_features_gives_the_same_gramian_and_update() -> None:
    net = Net("plain", 40, 30, tasks=3)
    x = torch.randn(6, 40, generator=torch.Generator().manual_seed(2))
    h = net.norm(torch.tanh(net.b(torch.relu(net.a(x)))))
    losses = [(head(h) ** 2).mean() for head in net.heads]
    params = net.shared()
    jacobian = task_jacobian(torch.stack(losses), params)
    assert cut_at_features(losses, h, params) is not None
    grads = TaskGradients(losses, params, h)
    assert torch.allclose(grads.gramian(), jacobian @ jacobian.T, rtol=1e-4, atol=1e-6)
    assert torch.allclose(grads.jacobian(), jacobian, rtol=1e-4, atol=1e-6)
    w = torch.tensor([0.3, -1.0, 2.0])
    grads.accumulate(w)
    assert torch.allclose(flat_grads(params), w @ jacobian, rtol=1e-4, atol=1e-6)


def test_no_cut_when_a_shared_parameter_bypasses_the_features() -> None:
    net = Net("plain", 40, 30, tasks=2)
    x = torch.randn(6, 40)
    h = torch.relu(net.a(x))
    out = net.norm(torch.tanh(net.b(h)))
    # task 1 also reads the first layer's output directly: `out` does not separate
    losses = [(net.heads[0](out) ** 2).mean(), (net.heads[1](out) ** 2).mean() + h.mean()]
    params = net.shared()
    assert cut_at_features(losses, out, params) is None
    jacobian = task_jacobian(torch.stack(losses), params)
    assert torch.allclose(task_jacobian(losses, params, out), jacobian, rtol=1e-4, atol=1e-6)
    grads = TaskGradients(losses, params, out)
    assert torch.allclose(grads.gramian(), jacobian @ jacobian.T, rtol=1e-4, atol=1e-6)


def test_no_cut_through_another_output_of_the_same_node() -> None:
    net = Net("plain", 40, 30, tasks=2)
    first, second = torch.relu(net.a(torch.randn(6, 40))).split(15, dim=1)
    losses = [(first**2).mean(), (first.sum(1) * second.sum(1)).mean()]
    assert cut_at_features(losses, first, net.shared()) is None


@pytest.mark.parametrize(("kind", "shape", "d_in", "width", "factored"), CASES)
@pytest.mark.parametrize("size", [1, 37, 600, None])
def test_blocks_tile_the_jacobian(
    kind: str, shape: tuple[int, ...], d_in: int, width: int, factored: int, size: int | None
) -> None:
    net = Net(kind, d_in, width, tasks=3)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    losses = net.losses(x)
    params = net.shared()
    grads = TaskGradients(losses, params)
    expected = (0, 0)
    pieces = []
    for i, start, block in grads.blocks(size):
        if expected[1] == params[expected[0]].numel():
            expected = (expected[0] + 1, 0)
        assert (i, start) == expected
        assert block.shape[0] == 3
        pieces.append(block)
        expected = (i, start + block.shape[1])
    assert expected == (len(params) - 1, params[-1].numel())
    assert torch.equal(torch.cat(pieces, dim=1), grads.jacobian(size))
    assert torch.allclose(grads.jacobian(size), task_jacobian(losses, params), rtol=1e-4, atol=1e-6)
