"""Recompute the weights every k steps only (Navon et al. 2022, "Multi-Task Learning as a
Bargaining Game", §6.4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from polytask.balance.base import (
    WRAPPERS,
    Balancer,
    GramianAggregator,
    WrapperOption,
    backward_task_specific,
    stack_losses,
)
from polytask.balance.gramian import TaskGradients
from polytask.balance.jacobian import feature_jacobian
from polytask.balance.wrappers.base import BalancerWrapper
from polytask.balance.wrappers.representation import Representation


def _is_weighted_sum(balancer: Balancer) -> bool:
    if isinstance(balancer, Representation):
        return _is_weighted_sum(balancer.inner)
    return isinstance(balancer, GramianAggregator)


class UpdateEvery(BalancerWrapper):
    """Every `every` steps the wrapped method solves for its task weights; in between, the
    last weights are reused for one backward of the weighted loss sum (the cost of `ew`).
    Only for methods whose update is a weighted sum of task gradients (Gramian methods,
    possibly at the representation level).
    """

    def __init__(self, inner: Balancer, every: int) -> None:
        if every < 1:
            raise ValueError(f"update_every must be >= 1, got {every}")
        if not _is_weighted_sum(inner):
            raise ValueError(
                f"update_every needs a method whose update is a weighted sum of the task "
                f"gradients (a Gramian method); {type(inner).__name__} is not"
            )
        super().__init__(inner)
        self.every = every
        self.step = 0
        self.cached: dict[str, float] | None = None

    def backward(
        self,
        losses: Mapping[str, Tensor],
        shared_params: Sequence[Tensor],
        features: Tensor | None = None,
        task_params: Sequence[Tensor] | None = None,
    ) -> dict[str, float]:
        names, vector = stack_losses(losses)
        if self.cached is None or self.step % self.every == 0 or set(self.cached) != set(names):
            self.cached = self.inner.backward(losses, shared_params, features, task_params)
        else:
            params = [p for p in shared_params if p.requires_grad]
            backward_task_specific(vector, params, task_params)
            w = torch.tensor([self.cached[n] for n in names], dtype=vector.dtype)
            w = w.to(vector.device)
            self.last_gramian = None
            if self.record_gramian and not isinstance(self.inner, Representation):
                # the caller wants the Gramian: the factors give it and the update at once
                gradients = TaskGradients([losses[n] for n in names], params, features)
                self.last_gramian = gradients.gramian().detach()
                gradients.accumulate(w)
            else:
                if self.record_gramian and features is not None:
                    jacobian = feature_jacobian([losses[n] for n in names], features)
                    self.last_gramian = (jacobian @ jacobian.T).detach()
                torch.autograd.backward((w * vector).sum(), inputs=params)
        self.step += 1
        return dict(self.cached)

    def reset(self) -> None:
        super().reset()
        self.step = 0
        self.cached = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "step": self.step, "cached": self.cached}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.step = state["step"]
        self.cached = state["cached"]


def _wrap(balancer: Balancer, value: Any) -> Balancer:
    return balancer if value in (None, 1) else UpdateEvery(balancer, int(value))


WRAPPERS["update_every"] = WrapperOption(order=30, wrap=_wrap)
