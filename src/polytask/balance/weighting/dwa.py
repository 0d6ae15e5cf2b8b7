"""Dynamic Weight Average (Liu, Johns & Davison 2019, "End-to-End Multi-Task Learning with
Attention", the MTAN paper)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from polytask.balance.base import BALANCERS, LossWeighting


@BALANCERS.register("dwa", paper="End-to-End Multi-Task Learning with Attention (Liu et al. 2019)")
class DynamicWeightAverage(LossWeighting):
    """DWA: w_t = T softmax(r / τ)_t with r_t = L̄_t(k-1) / L̄_t(k-2), the ratio of the task's
    mean losses over the two previous periods of `period` steps (the paper's periods are
    epochs; `period=1` uses the previous two steps). Sum convention: weights sum to T, as in
    the paper; equal weights (1 each) until two periods have been seen.
    """

    needs_all_tasks = True

    def __init__(self, temperature: float = 2.0, period: int = 1) -> None:
        super().__init__()
        if temperature <= 0 or period < 1:
            raise ValueError("dwa needs temperature > 0 and period >= 1")
        self.temperature = temperature
        self.period = period
        self.reset()

    def reset(self) -> None:
        self.history: list[Tensor] = []  # mean loss vector of each completed period
        self.running = torch.zeros(0, dtype=torch.float64)
        self.count = 0

    def loss_weights(self, losses: Tensor, names: Sequence[str]) -> Tensor:
        self.task_index(names)
        if list(names) != self.task_names:
            raise ValueError(f"dwa needs every task in every step, in order {self.task_names}")
        if len(self.history) >= 2:
            ratio = self.history[-1] / self.history[-2]
            w = len(names) * torch.softmax(ratio / self.temperature, dim=0)
        else:
            w = torch.ones(len(names), dtype=torch.float64)
        self._record(losses.detach().to("cpu", torch.float64))
        return w.to(losses.dtype)

    def _record(self, losses: Tensor) -> None:
        self.running = losses if self.count == 0 else self.running + losses
        self.count += 1
        if self.count == self.period:
            self.history = [*self.history[-1:], self.running / self.period]
            self.count = 0

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "running": self.running, "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = list(state["history"])
        self.running = state["running"]
        self.count = state["count"]
