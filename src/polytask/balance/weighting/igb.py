"""Improvable Gap Balancing, heuristic variant IGBv1 (Dai et al. 2023, "Improvable Gap
Balancing for Multi-Task Learning", UAI)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from polytask.balance.base import BALANCERS, LossWeighting


@BALANCERS.register("igb", paper="Improvable Gap Balancing for Multi-Task Learning (Dai 2023)")
class ImprovableGapBalancing(LossWeighting):
    """IGBv1: a task's improvable gap is its current loss relative to a reference loss (the
    mean over its first `reference_steps` steps; the target loss is 0), and the weights
    w = T softmax(gap / τ) give more weight to tasks with more left to improve. Sum
    convention (weights sum to T, as in the authors' code); equal weights (1 each) while the
    reference is being measured. The RL variant (IGBv2) is not implemented.
    """

    needs_all_tasks = True

    def __init__(self, temperature: float = 1.0, reference_steps: int = 1) -> None:
        super().__init__()
        if temperature <= 0 or reference_steps < 1:
            raise ValueError("igb needs temperature > 0 and reference_steps >= 1")
        self.temperature = temperature
        self.reference_steps = reference_steps
        self.reset()

    def reset(self) -> None:
        self.reference_sum = torch.zeros(0, dtype=torch.float64)
        self.seen = 0

    def loss_weights(self, losses: Tensor, names: Sequence[str]) -> Tensor:
        self.task_index(names)
        if list(names) != self.task_names:
            raise ValueError(f"igb needs every task in every step, in order {self.task_names}")
        current = losses.detach().to("cpu", torch.float64)
        if self.seen < self.reference_steps:
            self.reference_sum = current if self.seen == 0 else self.reference_sum + current
            self.seen += 1
            return torch.ones_like(losses).detach()
        reference = self.reference_sum / self.reference_steps
        gap = current / reference.clamp_min(torch.finfo(torch.float64).tiny)
        w = len(names) * torch.softmax(gap / self.temperature, dim=0)
        return w.to(dtype=losses.dtype, device=losses.device)

    def state_dict(self) -> dict[str, Any]:
        return {"reference_sum": self.reference_sum, "seen": self.seen}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.reference_sum = state["reference_sum"]
        self.seen = state["seen"]
