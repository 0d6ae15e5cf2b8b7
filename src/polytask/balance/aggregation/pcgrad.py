"""PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from polytask.balance.base import BALANCERS, GramianAggregator, make_generator


@BALANCERS.register("pcgrad", paper="Gradient Surgery for Multi-Task Learning (Yu et al. 2020)")
class PCGrad(GramianAggregator):
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

    def weights(self, gramian: Tensor) -> Tensor:
        g = gramian.detach().to("cpu", torch.float64)
        t = g.shape[0]
        coeffs = torch.eye(t, dtype=torch.float64)
        for i in range(t):
            for j in torch.randperm(t, generator=self.generator).tolist():
                dot = coeffs[i] @ g[:, j]
                if j != i and dot < 0 and g[j, j] > 0:
                    coeffs[i, j] -= dot / g[j, j]
        return coeffs.sum(0).to(dtype=gramian.dtype, device=gramian.device)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])
