"""Shared fixtures for the balancer tests: seeded matrices and a tiny multi-task model."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polytask.balance import BALANCERS, GramianWeighting, JacobianAggregator, Method


def random_jacobian(tasks: int, dim: int, rank: int, scale: float, seed: int) -> Tensor:
    """A T x P float64 matrix of the given rank, entries of order `scale`."""
    gen = torch.Generator().manual_seed(seed)
    left = torch.randn(tasks, rank, generator=gen, dtype=torch.float64)
    right = torch.randn(rank, dim, generator=gen, dtype=torch.float64)
    return scale * (left @ right) / rank**0.5


class TinyMultiTask(nn.Module):
    """Linear-ReLU-Linear-ReLU trunk and one linear head per task, MSE losses."""

    def __init__(self, tasks: int = 3, width: int = 8, inputs: int = 5, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = nn.Sequential(
            nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()
        )
        self.heads = nn.ModuleList(nn.Linear(width, 1) for _ in range(tasks))
        self.names = [f"t{i}" for i in range(tasks)]

    def shared(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())

    def task_params(self) -> list[nn.Parameter]:
        return list(self.heads.parameters())

    def losses(self, x: Tensor, y: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Per-task MSE losses and the shared features."""
        features = self.trunk(x)
        losses = {
            n: ((head(features).squeeze(-1) - y[:, i]) ** 2).mean()
            for i, (n, head) in enumerate(zip(self.names, self.heads, strict=True))
        }
        return losses, features


def batch(tasks: int = 3, size: int = 16, inputs: int = 5, seed: int = 1) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(size, inputs, generator=gen), torch.randn(size, tasks, generator=gen)


def flat_grads(params: list[nn.Parameter]) -> Tensor:
    return torch.cat(
        [torch.zeros(p.numel()) if p.grad is None else p.grad.flatten() for p in params]
    )


class AsAggregator:
    """A gradient method seen as a map from the T x P Jacobian to the update, as the
    property tests check it: `gramian_weights(J Jᵀ) @ J` for a Gramian weighting."""

    def __init__(self, method: Method) -> None:
        self.method = method

    def aggregate(self, jacobian: Tensor) -> Tensor:
        if isinstance(self.method, JacobianAggregator):
            return self.method.aggregate(jacobian)
        assert isinstance(self.method, GramianWeighting)
        return self.method.gramian_weights(jacobian @ jacobian.T) @ jacobian


def is_gradient_method(name: str) -> bool:
    return issubclass(BALANCERS.get(name), (GramianWeighting, JacobianAggregator))
