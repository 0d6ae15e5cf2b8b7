"""Representation-level gradients (the "upper bound" of Sener & Koltun 2018, "Multi-Task
Learning as Multi-Objective Optimization", MGDA-UB)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from polytask.balance.base import (
    WRAPPERS,
    Balancer,
    WrapperOption,
    start_backward,
)
from polytask.balance.jacobian import feature_jacobian
from polytask.balance.wrappers.base import BalancerWrapper, gramian_weights, require_aggregator


class Representation(BalancerWrapper):
    """Runs the aggregator on the per-task gradients w.r.t. the shared representation
    (`features`, B x D) instead of the shared parameters, then back-propagates the
    aggregated feature gradient through the trunk: T small backward passes through the
    heads plus one ordinary backward. For a Gramian method this is exactly the weighted loss sum
    with weights from the feature Gramian (MGDA-UB when the method is MGDA).

    Only for methods with `supports_features`; weightings (which ignore gradients) and
    methods with per-task state across batches are refused at construction.
    """

    def __init__(self, inner: Balancer) -> None:
        aggregator = require_aggregator(inner, "representation=True")
        if not aggregator.supports_features:
            raise ValueError(
                f"{type(inner).__name__} does not support representation-level gradients "
                "(supports_features is False)"
            )
        super().__init__(inner)
        self.aggregator = aggregator

    def backward(
        self,
        losses: Mapping[str, Tensor],
        shared_params: Sequence[Tensor],
        features: Tensor | None = None,
        task_params: Sequence[Tensor] | None = None,
    ) -> dict[str, float]:
        if features is None:
            raise ValueError(
                "representation=True needs the shared representation: pass features= to "
                "backward (the model must expose it)"
            )
        names, _vector, params = start_backward(losses, shared_params, task_params)
        jacobian = feature_jacobian([losses[n] for n in names], features)
        # the per-task gradients this method sees are those of the representation
        update, weights, gramian = gramian_weights(
            self.aggregator, jacobian, need_gramian=self.record_gramian
        )
        self.last_gramian = gramian
        torch.autograd.backward(
            features, grad_tensors=update.view_as(features), inputs=params, retain_graph=True
        )
        return {} if weights is None else dict(zip(names, weights.tolist(), strict=True))


def _wrap(balancer: Balancer, value: Any) -> Balancer:
    return Representation(balancer) if value else balancer


WRAPPERS["representation"] = WrapperOption(order=10, wrap=_wrap)
