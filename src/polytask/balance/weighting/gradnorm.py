"""GradNorm (Chen, Badrinarayanan, Lee & Rabinovich 2018, "GradNorm: Gradient Normalization
for Adaptive Loss Balancing in Deep Multitask Networks")."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from polytask.balance.base import BALANCERS, Balancer, stack_losses
from polytask.balance.gramian import TaskGradients


@BALANCERS.register(
    "gradnorm", paper="GradNorm: Gradient Normalization for Adaptive Loss Balancing (Chen 2018)"
)
class GradNorm(Balancer):
    """GradNorm: learnable weights w_t (in `parameters()`, trained by the run's optimizer)
    whose gradient is that of Σ_t |G_t - Ḡ r_t^α|, with G_t = w_t |∇_W L_t| the weighted
    gradient norm at the last shared weight matrix W, Ḡ its mean and r_t the task's
    inverse training rate L_t / L_t(0) over its mean. The network gets the gradient of
    Σ_t w_t L_t. After each optimizer step the weights are renormalised to sum to T (sum
    convention, as in the paper). Needs per-task gradients of W only (one batched backward
    that stops at W).
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

    def backward(
        self,
        losses: Mapping[str, Tensor],
        shared_params: Sequence[Tensor],
        features: Tensor | None = None,
        task_params: Sequence[Tensor] | None = None,
    ) -> dict[str, float]:
        del features, task_params  # the weighted-sum backward reaches every parameter
        if not self.task_names:
            raise RuntimeError("gradnorm learns one weight per task: call setup(task_names)")
        names, vector = stack_losses(losses)
        if names != self.task_names:
            raise ValueError(f"gradnorm needs every task in every step, in order {self.task_names}")
        trainable = [p for p in shared_params if p.requires_grad]
        matrices = [p for p in trainable if p.dim() >= 2]
        layer = (matrices or trainable)[-1]
        gramian = TaskGradients(vector, [layer]).gramian()
        norms = gramian.diagonal().clamp_min(0).sqrt().to(self.task_weights.dtype)
        if self.initial is None:
            self.initial = vector.detach().clone()
        rate = vector.detach() / self.initial
        rate = (rate / rate.mean()).to(self.task_weights.dtype)
        weighted = self.task_weights * norms
        target = (weighted.mean() * rate**self.alpha).detach()
        grad = torch.autograd.grad((weighted - target).abs().sum(), self.task_weights)[0]
        w = self.task_weights.detach()
        self.task_weights.grad = grad if self.task_weights.grad is None else (
            self.task_weights.grad + grad
        )
        (w.to(vector.dtype) * vector).sum().backward()
        return dict(zip(names, w.tolist(), strict=True))

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
