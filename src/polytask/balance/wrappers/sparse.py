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
    start_backward,
)
from polytask.balance.gramian import TaskGradients
from polytask.balance.wrappers.base import BalancerWrapper, gramian_weights, require_aggregator


class SparseTraining(BalancerWrapper):
    """Only a fixed subset (a `fraction`) of the shared parameter entries is updated; the
    aggregator sees the per-task gradients restricted to that subset, where the paper finds
    gradients conflict less. The subset is chosen at the first step as the entries with the
    largest |gradient of the summed loss| (our selection rule; the paper compares several)
    and is kept in the checkpoint. The other entries get no gradient from the balancer (an
    optimizer's weight decay still acts on them).

    The restricted T x K matrix is gathered a block at a time from the factored per-task
    gradients (`TaskGradients.blocks`), so the full T x P matrix is never formed.
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
        names, vector, params = start_backward(losses, shared_params, task_params)
        gradients = TaskGradients([losses[n] for n in names], params, features)
        self.last_gramian = gradients.gramian().detach() if self.record_gramian else None
        offsets = gradients.offsets
        if self.mask is None:
            self.mask = self._choose(gradients, offsets)
        mask = self.mask
        pieces = [
            block[:, mask[offsets[i] + start : offsets[i] + start + block.shape[1]]]
            for i, start, block in gradients.blocks()
        ]
        if pieces:
            selected = torch.cat(pieces, dim=1)
        else:
            selected = torch.zeros(len(names), 0, dtype=vector.dtype, device=vector.device)
        update = torch.zeros(offsets[-1], dtype=selected.dtype, device=selected.device)
        update[mask], weights, _ = gramian_weights(self.aggregator, selected)
        accumulate_flat(params, update)
        return {} if weights is None else dict(zip(names, weights.tolist(), strict=True))

    def _choose(self, gradients: TaskGradients, offsets: list[int]) -> Tensor:
        """The mask of the `fraction` of entries with the largest |Σ_t g_t|."""
        summed: Tensor | None = None
        for i, start, block in gradients.blocks():
            column = block.sum(0)
            if summed is None:
                summed = column.new_empty(offsets[-1])
            summed[offsets[i] + start : offsets[i] + start + column.numel()] = column
        if summed is None:
            like = gradients.other_grads
            return torch.zeros(offsets[-1], dtype=torch.bool, device=like.device)
        keep = math.ceil(self.fraction * summed.numel())
        chosen = summed.abs().topk(keep).indices
        mask = torch.zeros(summed.numel(), dtype=torch.bool, device=summed.device)
        mask[chosen] = True
        return mask

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
