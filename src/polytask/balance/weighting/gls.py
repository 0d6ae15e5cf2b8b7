"""Geometric loss strategy (Chennupati et al. 2019, "MultiNet++: Multi-Stream Feature
Aggregation and Geometric Loss Strategy for Multi-Task Learning")."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from polytask.balance.base import BALANCERS, LossWeighting


@BALANCERS.register(
    "gls", paper="MultiNet++: ... Geometric Loss Strategy for Multi-Task Learning (2019)"
)
class GeometricLoss(LossWeighting):
    """GLS: minimises the geometric mean (Π_t L_t)^(1/T) of the losses, which is invariant to
    rescaling any one loss. Its gradient is Σ_t w_t ∇L_t with w_t = GLS / (T L_t); those are
    the weights reported (mean convention: all 1/T when the losses are equal). Losses must
    be positive."""

    needs_all_tasks = True

    def loss_weights(self, losses: Tensor, names: Sequence[str]) -> Tensor:
        del names
        if not bool((losses.detach() > 0).all()):
            raise ValueError(f"gls needs positive losses, got {losses.detach().tolist()}")
        geometric = torch.exp(torch.log(losses.detach()).mean())
        return geometric / (losses.numel() * losses.detach())

    def objective(self, losses: Tensor, weights: Tensor) -> Tensor:
        del weights
        return torch.exp(torch.log(losses).mean())
