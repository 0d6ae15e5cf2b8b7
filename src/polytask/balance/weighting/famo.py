"""FAMO (Liu, Liang, Stone & Liu 2023, "FAMO: Fast Adaptive Multitask Optimization")."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from polytask.balance.base import BALANCERS, LossWeighting


@BALANCERS.register("famo", paper="FAMO: Fast Adaptive Multitask Optimization (Liu et al. 2023)")
class FAMO(LossWeighting):
    """FAMO: O(1) space and time per step; it never computes per-task gradients.

    With logits ξ and z = softmax(ξ), the step back-propagates Σ_t (z_t / c) log(L_t - m_t),
    c = Σ_t z_t / (L_t - m_t), so the reported weights w_t = z_t / (c (L_t - m_t)) sum to 1
    (mean convention). After the optimizer step, `after_step` re-evaluates the batch (one
    extra forward, no backward) and moves ξ with its own Adam(lr, weight_decay=γ) along the
    gradient of z·δ, δ_t = log(L_t - m_t) - log(L_t' - m_t) the log-loss decrease, so that
    tasks that improved less gain weight. m_t = `min_losses` (0 by default).
    """

    needs_all_tasks = True

    def __init__(
        self, lr: float = 0.025, weight_decay: float = 1e-3, min_losses: float = 0.0
    ) -> None:
        super().__init__()
        self.lr = lr
        self.weight_decay = weight_decay
        self.min_losses = min_losses
        self.eps = 1e-8
        self.setup([])

    def setup(self, task_names: Sequence[str]) -> None:
        super().setup(task_names)
        self.logits = torch.zeros(len(self.task_names), dtype=torch.float64, requires_grad=True)
        self.optimizer = torch.optim.Adam(
            [self.logits], lr=self.lr, weight_decay=self.weight_decay
        )
        self.previous: Tensor | None = None

    def _gap(self, losses: Tensor) -> Tensor:
        return losses - self.min_losses + self.eps

    def weights(self, losses: Tensor, names: Sequence[str]) -> Tensor:
        self.task_index(names)
        if list(names) != self.task_names:
            raise ValueError(f"famo needs every task in every step, in order {self.task_names}")
        gap = self._gap(losses.detach().to(torch.float64))
        z = torch.softmax(self.logits.detach(), dim=0).to(gap.device)
        c = (z / gap).sum()
        self.previous = gap
        return (z / (c * gap)).to(losses.dtype)

    def combine(self, losses: Tensor, weights: Tensor) -> Tensor:
        gap = self._gap(losses)
        return (weights * gap.detach() * torch.log(gap)).sum()

    def after_step(self, recompute_losses: Callable[[], Mapping[str, Tensor]]) -> None:
        if self.previous is None:
            return
        with torch.no_grad():
            new = recompute_losses()
            current = torch.stack([new[n].reshape(()) for n in self.task_names])
            delta = torch.log(self.previous) - torch.log(self._gap(current.to(torch.float64)))
            z = torch.softmax(self.logits, dim=0)
            # gradient of ξ -> z(ξ)·δ, the softmax Jacobian applied to δ (no autograd needed)
            self.logits.grad = (z * (delta.to(z.device) - z @ delta.to(z.device))).cpu()
        self.optimizer.step()
        self.previous = None

    def reset(self) -> None:
        self.setup(self.task_names)

    def state_dict(self) -> dict[str, Any]:
        return {"logits": self.logits.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            self.logits.copy_(state["logits"])
        self.optimizer.load_state_dict(state["optimizer"])
