"""M-ConFIG, the momentum variant of ConFIG (Liu et al. 2024, "ConFIG: Towards Conflict-free
Training of Physics Informed Neural Networks")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from polytask.balance.aggregation.config import config_weights
from polytask.balance.base import (
    BALANCERS,
    Balancer,
    accumulate_flat,
    start_backward,
)
from polytask.balance.gramian import TaskGradients
from polytask.balance.solvers import to_numpy


@BALANCERS.register("m_config", paper="ConFIG: momentum variant M-ConFIG (Liu et al. 2024)")
class MomentumConFIG(Balancer):
    """M-ConFIG: each step back-propagates ONE task's loss through the shared parameters
    (tasks in turn), folds it into that task's momentum m_t (rate `beta`, bias-corrected by
    the task's own count), and applies the ConFIG combination to the momenta of the tasks
    seen so far. Costs one shared backward per step and keeps T momentum vectors (in the
    checkpoint). The authors' Adam-like second moment is left to the run's optimizer.
    With `record_gramian` set, the step also computes the Gramian of this batch's task
    gradients (a batched backward) for the caller to log.
    Per-task momenta of representation gradients would mix different batches, so
    `representation=True` is refused.
    """

    needs_all_tasks = True

    def __init__(self, beta: float = 0.9) -> None:
        super().__init__()
        self.beta = beta
        self.reset()

    def reset(self) -> None:
        self.momenta: Tensor | None = None
        self.counts: list[int] = []
        self.step = 0

    def backward(
        self,
        losses: Mapping[str, Tensor],
        shared_params: Sequence[Tensor],
        features: Tensor | None = None,
        task_params: Sequence[Tensor] | None = None,
    ) -> dict[str, float]:
        names, _vector, params = start_backward(losses, shared_params, task_params)
        self.task_index(names)
        # the step itself needs one task's gradient only; the Gramian costs a batched backward
        self.last_gramian = (
            TaskGradients([losses[n] for n in names], params, features).gramian().detach()
            if self.record_gramian
            else None
        )
        t = len(self.task_names)
        task = self.task_names[self.step % t]
        grads = torch.autograd.grad(losses[task], params, retain_graph=True, allow_unused=True)
        flat = torch.cat([
            torch.zeros(p.numel(), dtype=p.dtype, device=p.device) if g is None else g.flatten()
            for g, p in zip(grads, params, strict=True)
        ])
        if self.momenta is None:
            self.momenta = torch.zeros(t, flat.numel(), dtype=flat.dtype, device=flat.device)
            self.counts = [0] * t
        i = self.task_names.index(task)
        self.momenta[i].mul_(self.beta).add_(flat, alpha=1 - self.beta)
        self.counts[i] += 1
        self.step += 1
        seen = [k for k in range(t) if self.counts[k] > 0]
        corrected = torch.stack([self.momenta[k] / (1 - self.beta ** self.counts[k]) for k in seen])
        w = torch.as_tensor(config_weights(to_numpy(corrected @ corrected.T)), dtype=flat.dtype)
        accumulate_flat(params, w.to(flat.device) @ corrected)
        return {self.task_names[k]: float(v) for k, v in zip(seen, w, strict=True)}

    def state_dict(self) -> dict[str, Any]:
        return {"momenta": self.momenta, "counts": list(self.counts), "step": self.step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.momenta = state["momenta"]
        self.counts = list(state["counts"])
        self.step = state["step"]
