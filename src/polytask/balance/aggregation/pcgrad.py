"""PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from polytask.balance.base import BALANCERS, GramianWeighting, make_generator
from polytask.balance.solvers import to_numpy


@BALANCERS.register("pcgrad", paper="Gradient Surgery for Multi-Task Learning (Yu et al. 2020)")
class PCGrad(GramianWeighting):
    """PCGrad: each task gradient g_i, visiting the other tasks in a random order, is
    projected onto the normal plane of every g_j it conflicts with (g_i·g_j < 0); the update
    is the sum of the projected gradients (sum convention, as in the paper).

    Every projected gradient stays a linear combination of the g_j, so the method runs on
    the Gramian alone: row i of a T x T coefficient matrix C tracks g_i' = C_i J, and
    g_i'·g_j = (C G)_ij. The weights are the column sums of C. The visiting order is drawn
    from `generator` (a fresh permutation for every i, as in the authors' code).
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.generator = make_generator(generator)

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        rows = to_numpy(gramian).tolist()  # T is small: plain floats beat tensor ops here
        t = len(rows)
        total = [0.0] * t
        for i in range(t):
            coeffs = [0.0] * t
            coeffs[i] = 1.0
            dots = list(rows[i])  # dots[j] = g_i'·g_j = (C G)_ij, kept up to date
            for j in torch.randperm(t, generator=self.generator).tolist():
                diag = rows[j][j]
                if j != i and dots[j] < 0 and diag > 0:
                    step = dots[j] / diag
                    coeffs[j] -= step
                    dots = [d - step * r for d, r in zip(dots, rows[j], strict=True)]
            total = [a + c for a, c in zip(total, coeffs, strict=True)]
        return torch.tensor(total, dtype=gramian.dtype, device=gramian.device)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])
