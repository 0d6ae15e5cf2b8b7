"""Uncertainty weighting (Kendall, Gal & Cipolla 2018, "Multi-Task Learning Using
Uncertainty to Weigh Losses for Scene Geometry and Semantics")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from polytask.balance.base import BALANCERS, LossWeighting


@BALANCERS.register(
    "uw",
    paper="Multi-Task Learning Using Uncertainty to Weigh Losses (Kendall et al. 2018)",
)
class UncertaintyWeighting(LossWeighting):
    """Uncertainty weighting: learns a log-variance s_t per task and minimises
    Σ_t exp(-s_t) L_t + s_t.

    Weights are exp(-s_t) (sum convention: 1 per task at the start). This is the common
    form of Kendall et al.'s objective (twice their regression form ½exp(-s)L + ½s, with the
    same optimum exp(s_t) = L_t). The s_t are in `parameters()`, which the optimizer must
    train; `setup(task_names)` must therefore run before the optimizer is built.
    """

    def __init__(self, init: float = 0.0) -> None:
        super().__init__()
        self.init = init
        self.log_vars = nn.Parameter(torch.zeros(0))

    def setup(self, task_names: Sequence[str]) -> None:
        super().setup(task_names)
        self.log_vars = nn.Parameter(torch.full((len(self.task_names),), float(self.init)))

    def parameters(self) -> list[nn.Parameter]:
        return [self.log_vars]

    def loss_weights(self, losses: Tensor, names: Sequence[str]) -> Tensor:
        if not self.task_names:
            raise RuntimeError("uw learns one parameter per task: call setup(task_names) first")
        return torch.exp(-self.log_vars[self.task_index(names)]).to(losses.dtype)

    def objective(self, losses: Tensor, weights: Tensor) -> Tensor:
        # Σ exp(-s) L + s, written with w = exp(-s) so that autograd reaches s through w.
        return (weights * losses - torch.log(weights)).sum()

    def reset(self) -> None:
        with torch.no_grad():
            self.log_vars.fill_(float(self.init))

    def state_dict(self) -> dict[str, Any]:
        return {"log_vars": self.log_vars.detach().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            self.log_vars.copy_(state["log_vars"])
