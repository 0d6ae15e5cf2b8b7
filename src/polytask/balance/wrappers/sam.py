"""Per-task sharpness-aware gradients (Phan et al. 2022, "Improving Multi-task Learning via
Seeking Task-based Flat Regions")."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from polytask.balance.base import (
    WRAPPERS,
    Balancer,
    WrapperOption,
    accumulate_flat,
    start_backward,
)
from polytask.balance.jacobian import task_jacobian
from polytask.balance.wrappers.base import BalancerWrapper, gramian_weights, require_aggregator

Closure = Callable[[], Mapping[str, Tensor]]


class TaskSAM(BalancerWrapper):
    """Each task t gets its own worst-case perturbation ε_t = ρ g_t / |g_t| of the shared
    parameters and its flat gradient h_t = ∇L_t(θ + ε_t). As in the paper, the aggregator
    combines the task gradients g_t and, separately, the flatness components h_t - g_t;
    the update is the sum of the two. Task-specific parameters get their plain gradient.

    Re-evaluating the losses at θ + ε_t needs the model: call `set_closure(fn)` with a
    function that recomputes the current batch's losses (with gradients) before each
    `backward`. Costs T extra forward/backward passes per step.
    """

    def __init__(self, inner: Balancer, rho: float) -> None:
        self.aggregator = require_aggregator(inner, "per-task SAM")
        if rho <= 0:
            raise ValueError(f"sam_rho must be > 0, got {rho}")
        super().__init__(inner)
        self.rho = rho
        self.closure: Closure | None = None

    def set_closure(self, closure: Closure) -> None:
        """`closure()` re-evaluates the current batch and returns the losses by task."""
        self.closure = closure

    def backward(
        self,
        losses: Mapping[str, Tensor],
        shared_params: Sequence[Tensor],
        features: Tensor | None = None,
        task_params: Sequence[Tensor] | None = None,
    ) -> dict[str, float]:
        if self.closure is None:
            raise RuntimeError("per-task SAM needs set_closure(fn) to re-evaluate the losses")
        names, _vector, params = start_backward(losses, shared_params, task_params)
        jacobian = task_jacobian([losses[n] for n in names], params, features)
        self.last_gramian = (jacobian @ jacobian.T).detach() if self.record_gramian else None
        flat = torch.zeros_like(jacobian)
        for t, name in enumerate(names):
            norm = jacobian[t].norm()
            if norm == 0:
                flat[t] = jacobian[t]
                continue
            saved = [p.detach().clone() for p in params]
            _shift(params, self.rho * jacobian[t] / norm)
            try:
                perturbed = self.closure()[name]
                grads = torch.autograd.grad(perturbed, params, allow_unused=True)
            finally:
                with torch.no_grad():
                    for p, value in zip(params, saved, strict=True):
                        p.copy_(value)
            flat[t] = torch.cat([
                torch.zeros(p.numel(), dtype=jacobian.dtype, device=p.device)
                if g is None else g.flatten()
                for g, p in zip(grads, params, strict=True)
            ])
        update, weights, _ = gramian_weights(self.aggregator, jacobian)
        accumulate_flat(params, update + gramian_weights(self.aggregator, flat - jacobian)[0])
        return {} if weights is None else dict(zip(names, weights.tolist(), strict=True))


def _shift(params: Sequence[Tensor], step: Tensor) -> None:
    offset = 0
    with torch.no_grad():
        for p in params:
            p.add_(step[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def _wrap(balancer: Balancer, value: Any) -> Balancer:
    return balancer if not value else TaskSAM(balancer, float(value))


WRAPPERS["sam_rho"] = WrapperOption(order=20, wrap=_wrap)
