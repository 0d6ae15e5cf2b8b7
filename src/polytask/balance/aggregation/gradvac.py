"""GradVac (Wang, Tsvetkov, Firat & Cao 2021, "Gradient Vaccine: Investigating and Improving
Multi-task Optimization in Massively Multilingual Models", ICLR)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from polytask.balance.base import BALANCERS, GramianWeighting, make_generator
from polytask.balance.solvers import to_numpy


@BALANCERS.register("gradvac", paper="Gradient Vaccine (Wang et al. 2021)")
class GradVac(GramianWeighting):
    """GradVac: like PCGrad, but every pair of tasks has a target cosine φ̂_ij (an EMA, rate
    `beta`, of the observed cosines, starting at 0); whenever cos(g_i', g_j) < φ̂_ij, g_i'
    is moved along g_j until the cosine equals the target. Sum of the adjusted gradients
    (sum convention). Whole-model granularity; runs on the Gramian (coefficients as in
    PCGrad); the targets are per task position and are checkpointed.
    """

    def __init__(self, beta: float = 0.01, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.beta = beta
        self.generator = make_generator(generator)
        self.targets: Tensor | None = None

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        rows = to_numpy(gramian).tolist()  # T is small: plain floats beat tensor ops here
        t = len(rows)
        if self.targets is None or self.targets.shape[0] != t:
            self.targets = torch.zeros(t, t, dtype=torch.float64)
        targets = self.targets.tolist()
        total = [0.0] * t
        for i in range(t):
            coeffs = [0.0] * t
            coeffs[i] = 1.0
            dots = list(rows[i])  # dots[j] = g_i'·g_j = (C G)_ij, kept up to date
            for j in torch.randperm(t, generator=self.generator).tolist():
                norm_i2 = sum(c * d for c, d in zip(coeffs, dots, strict=True))
                norm_j2 = rows[j][j]
                if j == i or norm_i2 <= 0 or norm_j2 <= 0:
                    continue
                cos = max(-1.0, min(1.0, dots[j] / math.sqrt(norm_i2 * norm_j2)))
                target = targets[i][j]
                if cos < target < 1.0:
                    gap = target * math.sqrt(1 - cos**2) - cos * math.sqrt(1 - target**2)
                    step = math.sqrt(norm_i2 / norm_j2) * gap / math.sqrt(1 - target**2)
                    coeffs[j] += step
                    dots = [d + step * r for d, r in zip(dots, rows[j], strict=True)]
                targets[i][j] = (1 - self.beta) * target + self.beta * cos
            total = [a + c for a, c in zip(total, coeffs, strict=True)]
        self.targets = torch.tensor(targets, dtype=torch.float64)
        return torch.tensor(total, dtype=gramian.dtype, device=gramian.device)

    def reset(self) -> None:
        self.targets = None

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "targets": self.targets}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.targets = state["targets"]
