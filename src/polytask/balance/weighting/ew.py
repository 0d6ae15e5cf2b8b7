"""Equal weighting: the plain average of the task losses (the baseline every paper uses)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from polytask.balance.base import BALANCERS, LossWeighting


@BALANCERS.register("ew", paper="Equal weighting (the standard multi-task baseline)")
class EqualWeighting(LossWeighting):
    """Equal weighting: every task weighs 1/T (mean convention), so `ew` on one task is
    single-task training and the learning rate does not need retuning when T changes."""

    def loss_weights(self, losses: Tensor, names: Sequence[str]) -> Tensor:
        del names
        return torch.full_like(losses, 1.0 / losses.numel()).detach()
