"""M-ConFIG, the momentum variant of ConFIG (Liu et al. 2024, "ConFIG: Towards Conflict-free
Training of Physics Informed Neural Networks")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from polytask.balance.aggregation.config import config_weights
from polytask.balance.base import BALANCERS, JacobianAggregator
from polytask.balance.solvers import to_numpy


@BALANCERS.register("m_config", paper="ConFIG: momentum variant M-ConFIG (Liu et al. 2024)")
class MomentumConFIG(JacobianAggregator):
    """M-ConFIG: each step back-propagates ONE task's loss through the shared parameters
    (tasks in turn), folds it into that task's momentum m_t (rate `beta`, bias-corrected by
    the task's own count), and applies the ConFIG combination to the momenta of the tasks
    seen so far. Costs one shared backward per step and keeps T momentum vectors (in the
    checkpoint). The authors' Adam-like second moment is left to the run's optimizer.
    When the caller asks the engine for the Gramian (to log it), the step also computes
    the Gramian of this batch's task gradients (a batched backward).
    Per-task momenta of representation gradients would mix different batches, so
    `representation=True` is refused.
    """

    supports_features = False

    def __init__(self, beta: float = 0.9) -> None:
        super().__init__()
        self.beta = beta
        self.reset()

    def reset(self) -> None:
        self.momenta: Tensor | None = None
        self.counts: list[int] = []
        self.step = 0

    def tasks_for_step(self, names: Sequence[str]) -> list[str]:
        self.task_index(names)
        return [self.task_names[self.step % len(self.task_names)]]

    def aggregate(self, jacobian: Tensor) -> Tensor:
        """The ConFIG update of the momenta, after folding in `jacobian` (1 x P: this
        step's task, the one `tasks_for_step` named)."""
        t = len(self.task_names)
        flat = jacobian[0]
        if self.momenta is None:
            self.momenta = torch.zeros(t, flat.numel(), dtype=flat.dtype, device=flat.device)
            self.counts = [0] * t
        i = self.step % t
        self.momenta[i].mul_(self.beta).add_(flat, alpha=1 - self.beta)
        self.counts[i] += 1
        self.step += 1
        seen = [k for k in range(t) if self.counts[k] > 0]
        corrected = torch.stack([self.momenta[k] / (1 - self.beta ** self.counts[k]) for k in seen])
        w = torch.as_tensor(config_weights(to_numpy(corrected @ corrected.T)), dtype=flat.dtype)
        return w.to(flat.device) @ corrected

    def state_dict(self) -> dict[str, Any]:
        return {"momenta": self.momenta, "counts": list(self.counts), "step": self.step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.momenta = state["momenta"]
        self.counts = list(state["counts"])
        self.step = state["step"]
