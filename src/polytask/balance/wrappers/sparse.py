"""Sparse training (Zhang et al. 2024, "Proactive Gradient Conflict Mitigation in Multi-Task
Learning: A Sparse Training Perspective")."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from polytask.balance.base import (
    WRAPPERS,
    Balancer,
    WrapperOption,
    accumulate_flat,
    backward_task_specific,
    stack_losses,
)
from polytask.balance.jacobian import task_jacobian
from polytask.balance.wrappers.base import BalancerWrapper, gramian_weights, require_aggregator


class SparseTraining(BalancerWrapper):
    """Only a fixed subset (a `fraction`) of the shared parameter entries is updated; the
    aggregator sees the per-task gradients restricted to that subset, where the paper finds
    gradients conflict less. The subset is chosen at the first step as the entries with the
    largest |gradient of the summed loss| (our selection rule; the paper compares several)
    and is kept in the checkpoint. The other entries get no gradient from the balancer (an
    optimizer's weight decay still acts on them).
    """

    def __init__(self, inner: Balancer, fraction: float) -> None:
        self.aggregator = require_aggregator(inner, "sparse training")
        if not 0 < fraction <= 1:
            raise ValueError(f"sparse must be a fraction in (0, 1], got {fraction}")
        super().__init__(inner)
        self.fraction = fraction
        self.mask: Tensor | None = None

    def backward(
        self,
        losses: Mapping[str, Tensor],
        shared_params: Sequence[Tensor],
        features: Tensor | None = None,
        task_params: Sequence[Tensor] | None = None,
    ) -> dict[str, float]:
        names, vector = stack_losses(losses)
        params = [p for p in shared_params if p.requires_grad]
        backward_task_specific(vector, params, task_params)
        jacobian = task_jacobian([losses[n] for n in names], params, features)
        self.last_gramian = (jacobian @ jacobian.T).detach() if self.record_gramian else None
        if self.mask is None:
            keep = math.ceil(self.fraction * jacobian.shape[1])
            chosen = jacobian.sum(0).abs().topk(keep).indices
            self.mask = torch.zeros(jacobian.shape[1], dtype=torch.bool, device=jacobian.device)
            self.mask[chosen] = True
        update = torch.zeros_like(jacobian[0])
        update[self.mask], weights, _ = gramian_weights(self.aggregator, jacobian[:, self.mask])
        accumulate_flat(params, update)
        return {} if weights is None else dict(zip(names, weights.tolist(), strict=True))

    def reset(self) -> None:
        super().reset()
        self.mask = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "mask": self.mask}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.mask = state["mask"]


def _wrap(balancer: Balancer, value: Any) -> Balancer:
    return balancer if value in (None, 1, 1.0) else SparseTraining(balancer, float(value))


WRAPPERS["sparse"] = WrapperOption(order=10, wrap=_wrap)
