"""GradNorm (Chen, Badrinarayanan, Lee & Rabinovich 2018, "GradNorm: Gradient Normalization
for Adaptive Loss Balancing in Deep Multitask Networks")."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from polytask.balance.base import BALANCERS, LossWeighting


@BALANCERS.register(
    "gradnorm", paper="GradNorm: Gradient Normalization for Adaptive Loss Balancing (Chen 2018)"
)
class GradNorm(LossWeighting):
    """GradNorm: learnable weights w_t (in `parameters()`, trained by the run's optimizer)
    whose gradient is that of Σ_t |G_t - Ḡ r_t^α|, with G_t = w_t |∇_W L_t| the weighted
    gradient norm at the last shared weight matrix W, Ḡ its mean and r_t the task's
    inverse training rate L_t / L_t(0) over its mean. The network gets the gradient of
    Σ_t w_t L_t. After each optimizer step the weights are renormalised to sum to T (sum
    convention, as in the paper). Needs per-task gradients of W only: the engine computes
    their Gramian (one batched backward that stops at W) for `observe_gramian`.
    """

    needs_all_tasks = True

    def __init__(self, alpha: float = 1.5) -> None:
        super().__init__()
        self.alpha = alpha
        self.task_weights = nn.Parameter(torch.ones(0))
        self.initial: Tensor | None = None

    def setup(self, task_names: Sequence[str]) -> None:
        super().setup(task_names)
        self.task_weights = nn.Parameter(torch.ones(len(self.task_names)))
        self.initial = None

    def parameters(self) -> list[nn.Parameter]:
        return [self.task_weights]

    def gradient_probe(self, shared_params: Sequence[Tensor]) -> list[Tensor]:
        trainable = [p for p in shared_params if p.requires_grad]
        matrices = [p for p in trainable if p.dim() >= 2]
        return (matrices or trainable)[-1:]

    def observe_gramian(self, gramian: Tensor, losses: Tensor) -> None:
        """Add the GradNorm loss's gradient into the weights' `.grad`."""
        norms = gramian.diagonal().clamp_min(0).sqrt().to(self.task_weights.dtype)
        if self.initial is None:
            self.initial = losses.detach().clone()
        rate = losses.detach() / self.initial
        rate = (rate / rate.mean()).to(self.task_weights.dtype)
        weighted = self.task_weights * norms
        target = (weighted.mean() * rate**self.alpha).detach()
        grad = torch.autograd.grad((weighted - target).abs().sum(), self.task_weights)[0]
        self.task_weights.grad = grad if self.task_weights.grad is None else (
            self.task_weights.grad + grad
        )

    def loss_weights(self, losses: Tensor, names: Sequence[str]) -> Tensor:
        if not self.task_names:
            raise RuntimeError("gradnorm learns one weight per task: call setup(task_names)")
        if list(names) != self.task_names:
            raise ValueError(f"gradnorm needs every task in every step, in order {self.task_names}")
        return self.task_weights.detach().to(losses.dtype)

    def after_step(self, recompute_losses: Callable[[], Mapping[str, Tensor]]) -> None:
        del recompute_losses
        with torch.no_grad():
            self.task_weights.clamp_(min=0.0)
            total = self.task_weights.sum()
            if total > 0:
                self.task_weights.mul_(len(self.task_weights) / total)

    def reset(self) -> None:
        self.setup(self.task_names)

    def state_dict(self) -> dict[str, Any]:
        return {"task_weights": self.task_weights.detach().clone(), "initial": self.initial}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            self.task_weights.copy_(state["task_weights"])
        self.initial = state["initial"]
