"""FAMO (Liu, Liang, Stone & Liu 2023, "FAMO: Fast Adaptive Multitask Optimization")."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from polytask.balance.base import BALANCERS, LossWeighting


@BALANCERS.register("famo", paper="FAMO: Fast Adaptive Multitask Optimization (Liu et al. 2023)")
class FAMO(LossWeighting):
    """FAMO: O(1) space and time per step; it never computes per-task gradients.

    With logits ξ and z = softmax(ξ), the step back-propagates Σ_t (z_t / c) log(L_t - m_t),
    c = Σ_t z_t / (L_t - m_t), whose gradient is that of Σ_t w_t L_t with the reported weights
    w_t = z_t / (c (L_t - m_t)), which sum to 1 (mean convention); the weighted sum is what is
    back-propagated. After the optimizer step, `after_step` re-evaluates the batch (one
    extra forward, no backward) and moves ξ with Adam(lr, weight_decay=γ) along the gradient
    of z·δ, δ_t = log(L_t - m_t) - log(L_t' - m_t) the log-loss decrease, so that tasks that
    improved less gain weight. m_t = `min_losses` (0 by default).

    `lagged=True` is a deviation from the paper: it skips the extra forward and moves ξ at
    the next step, from that step's losses L_t'' (another batch, after the update) in place
    of L_t' (the same batch, re-evaluated). It costs the same as `ew`; the weights lag one
    step behind and the log-loss decrease mixes in the change of batch. The faithful
    variant (`lagged=False`) is the default.

    The Adam step on the T logits is written out (the same arithmetic as `torch.optim.Adam`)
    and all of the method's state lives on the losses' device: a handful of T-vector
    operations per step and no host-device synchronisation.
    """

    needs_all_tasks = True
    betas = (0.9, 0.999)
    adam_eps = 1e-8

    def __init__(
        self,
        lr: float = 0.025,
        weight_decay: float = 1e-3,
        min_losses: float = 0.0,
        lagged: bool = False,
    ) -> None:
        super().__init__()
        self.lagged = lagged
        self.lr = lr
        self.weight_decay = weight_decay
        self.min_losses = min_losses
        self.eps = 1e-8
        self.setup([])

    def setup(self, task_names: Sequence[str]) -> None:
        super().setup(task_names)
        t = len(self.task_names)
        self.logits = torch.zeros(t, dtype=torch.float64)
        self.exp_avg = torch.zeros(t, dtype=torch.float64)
        self.exp_avg_sq = torch.zeros(t, dtype=torch.float64)
        self.steps = 0
        self._z = torch.full((t,), 1.0 / t if t else 0.0, dtype=torch.float64)
        self.previous: Tensor | None = None

    def _to(self, device: torch.device) -> None:
        if self.logits.device != device:
            for key in ("logits", "exp_avg", "exp_avg_sq", "_z"):
                setattr(self, key, getattr(self, key).to(device))

    def loss_weights(self, losses: Tensor, names: Sequence[str]) -> Tensor:
        if list(names) != self.task_names:
            self.task_index(names)
            if list(names) != self.task_names:
                raise ValueError(
                    f"famo needs every task in every step, in order {self.task_names}"
                )
        self._to(losses.device)
        gap = losses.detach().to(torch.float64) - (self.min_losses - self.eps)
        if self.lagged and self.previous is not None:
            self._learn(self.previous, gap)
        inverse = self._z / gap
        self.previous = gap
        return (inverse / inverse.sum()).to(losses.dtype)

    def after_step(self, recompute_losses: Callable[[], Mapping[str, Tensor]]) -> None:
        if self.lagged:
            return  # the next step's losses stand in for the re-evaluated ones
        previous, self.previous = self.previous, None
        if previous is None:
            return
        with torch.no_grad():
            new = recompute_losses()
            current = torch.stack([new[n].reshape(()) for n in self.task_names])
            current = current.to(previous.device, torch.float64) - (self.min_losses - self.eps)
            self._learn(previous, current)

    @torch.no_grad()
    def _learn(self, previous: Tensor, current: Tensor) -> None:
        """One Adam step on the logits from the log-loss decrease `previous` -> `current`."""
        delta = torch.log(previous / current)
        z = self._z
        # gradient of ξ -> z(ξ)·δ (the softmax Jacobian applied to δ), plus Adam's L2 term
        grad = z * (delta - z @ delta)
        if self.weight_decay:
            grad = grad.add_(self.logits, alpha=self.weight_decay)
        beta1, beta2 = self.betas
        self.steps += 1
        self.exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        correction2 = math.sqrt(1 - beta2**self.steps)
        denominator = (self.exp_avg_sq.sqrt() / correction2).add_(self.adam_eps)
        step_size = self.lr / (1 - beta1**self.steps)
        self.logits.addcdiv_(self.exp_avg, denominator, value=-step_size)
        self._z = torch.softmax(self.logits, dim=0)

    def reset(self) -> None:
        self.setup(self.task_names)

    def state_dict(self) -> dict[str, Any]:
        return {
            "logits": self.logits.detach().cpu().clone(),
            "exp_avg": self.exp_avg.cpu().clone(),
            "exp_avg_sq": self.exp_avg_sq.cpu().clone(),
            "steps": self.steps,
            "previous": None if self.previous is None else self.previous.cpu().clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        device = self.logits.device
        if "optimizer" in state:  # written by the torch.optim.Adam version
            adam = next(iter(state["optimizer"]["state"].values()), None)
            zeros = torch.zeros_like(state["logits"], dtype=torch.float64)
            state = {
                "logits": state["logits"],
                "exp_avg": zeros if adam is None else adam["exp_avg"],
                "exp_avg_sq": zeros if adam is None else adam["exp_avg_sq"],
                "steps": 0 if adam is None else int(adam["step"]),
            }
        self.logits = state["logits"].to(device, torch.float64).clone()
        self.exp_avg = state["exp_avg"].to(device, torch.float64).clone()
        self.exp_avg_sq = state["exp_avg_sq"].to(device, torch.float64).clone()
        self.steps = int(state["steps"])
        self._z = torch.softmax(self.logits, dim=0)
        previous = state.get("previous")
        self.previous = None if previous is None else previous.to(device, torch.float64)
