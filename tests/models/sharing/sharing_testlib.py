"""Shared pieces of the sharing-architecture tests: building an architecture, a synthetic
3-task regression problem (a shared latent plus task-specific parts) and a small trainer
with per-task linear heads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from polytask.models.sharing import ARCHITECTURES, SharingArchitecture

TASKS = ("a", "b", "c")
INPUT_DIM = 8


def build(name: str, seed: int = 0, **options: Any) -> SharingArchitecture:
    torch.manual_seed(seed)
    return ARCHITECTURES.get(name)(INPUT_DIM, TASKS, **options)


def features(*shape: int) -> Tensor:
    return torch.randn(*shape, INPUT_DIM, generator=torch.Generator().manual_seed(1))


@dataclass
class Regression:
    x_train: Tensor
    y_train: dict[str, Tensor]
    x_test: Tensor
    y_test: dict[str, Tensor]


def synthetic_regression(seed: int = 0, n_train: int = 1024, n_test: int = 256) -> Regression:
    """y_t = u_t . tanh(x A) + v_t . tanh(x B_t) + noise: a shared latent and a private part."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_test, INPUT_DIM, generator=g)
    shared = torch.tanh(x @ torch.randn(INPUT_DIM, 4, generator=g) / 2)
    y = {}
    for t in TASKS:
        own = torch.tanh(x @ torch.randn(INPUT_DIM, 2, generator=g) / 2)
        u, v = torch.randn(4, generator=g), torch.randn(2, generator=g)
        y[t] = shared @ u + own @ v + 0.05 * torch.randn(len(x), generator=g)
    return Regression(
        x[:n_train], {t: v[:n_train] for t, v in y.items()},
        x[n_train:], {t: v[n_train:] for t, v in y.items()},
    )  # fmt: skip


class WithHeads(nn.Module):
    """An architecture plus one linear regression head per task."""

    def __init__(self, arch: SharingArchitecture) -> None:
        super().__init__()
        self.arch = arch
        self.heads = nn.ModuleDict({t: nn.Linear(arch.output_dim, 1) for t in arch.task_names})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        reps = self.arch(x, self.arch.task_names)
        return {t: self.heads[t](r).squeeze(-1) for t, r in reps.items()}


def fit(arch: SharingArchitecture, data: Regression, steps: int = 300) -> dict[str, float]:
    """Adam on the summed MSE (+ the auxiliary loss); returns each task's held-out MSE
    divided by that of the constant predictor (the training mean)."""
    torch.manual_seed(0)
    model = WithHeads(arch)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        preds = model(data.x_train)
        loss = sum(nn.functional.mse_loss(preds[t], data.y_train[t]) for t in TASKS)
        aux = arch.auxiliary_loss()
        if aux is not None:
            loss = loss + aux
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        preds = model(data.x_test)
    ratios = {}
    for t in TASKS:
        constant = data.y_train[t].mean().expand_as(data.y_test[t])
        mse = nn.functional.mse_loss(preds[t], data.y_test[t])
        ratios[t] = float(mse / nn.functional.mse_loss(constant, data.y_test[t]))
    return ratios
