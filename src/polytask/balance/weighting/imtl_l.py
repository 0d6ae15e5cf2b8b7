"""IMTL-L, the loss half of Impartial Multi-Task Learning (Liu et al. 2021, "Towards
Impartial Multi-task Learning", ICLR)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from polytask.balance.base import BALANCERS, LossWeighting


@BALANCERS.register("imtl_l", paper="Towards Impartial Multi-task Learning (Liu et al. 2021)")
class ImpartialLossWeighting(LossWeighting):
    """IMTL-L: learns a scale s_t per task and minimises Σ_t exp(s_t) L_t - s_t, which drives
    every scaled loss exp(s_t) L_t towards 1 (scale-impartial losses). Weights exp(s_t), 1 at
    the start (sum convention). The s_t are in `parameters()`; call `setup` first.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scales = nn.Parameter(torch.zeros(0))

    def setup(self, task_names: Sequence[str]) -> None:
        super().setup(task_names)
        self.scales = nn.Parameter(torch.zeros(len(self.task_names)))

    def parameters(self) -> list[nn.Parameter]:
        return [self.scales]

    def loss_weights(self, losses: Tensor, names: Sequence[str]) -> Tensor:
        if not self.task_names:
            raise RuntimeError("imtl_l learns one parameter per task: call setup(task_names)")
        return torch.exp(self.scales[self.task_index(names)]).to(losses.dtype)

    def objective(self, losses: Tensor, weights: Tensor) -> Tensor:
        # Σ exp(s) L - s with w = exp(s), so that autograd reaches s through w.
        return (weights * losses - torch.log(weights)).sum()

    def reset(self) -> None:
        with torch.no_grad():
            self.scales.zero_()

    def state_dict(self) -> dict[str, Any]:
        return {"scales": self.scales.detach().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            self.scales.copy_(state["scales"])
