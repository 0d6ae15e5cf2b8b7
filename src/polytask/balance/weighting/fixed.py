"""Fixed, user-given task weights (the scalarisation every multi-task paper starts from)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from polytask.balance.base import BALANCERS, LossWeighting


@BALANCERS.register("fixed", paper="Linear scalarisation with fixed task weights")
class FixedWeighting(LossWeighting):
    """Fixed weights: the loss is Σ_t w_t L_t with the user's w (sum convention: weights are
    used as given, not renormalised), e.g. `get("fixed", weights={"a": 1.0, "b": 0.1})`."""

    def __init__(self, weights: Mapping[str, float]) -> None:
        super().__init__()
        if any(not w >= 0 for w in weights.values()):
            raise ValueError(f"fixed weights must be non-negative numbers, got {dict(weights)}")
        self.fixed = dict(weights)

    def setup(self, task_names: Sequence[str]) -> None:
        missing = [n for n in task_names if n not in self.fixed]
        if missing:
            raise ValueError(f"fixed weights give no weight for tasks {missing}")
        super().setup(task_names)

    def loss_weights(self, losses: Tensor, names: Sequence[str]) -> Tensor:
        missing = [n for n in names if n not in self.fixed]
        if missing:
            raise KeyError(f"fixed weights give no weight for tasks {missing}")
        return torch.tensor([self.fixed[n] for n in names], dtype=losses.dtype)
