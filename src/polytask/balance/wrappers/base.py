"""What every wrapper shares: delegation to the wrapped balancer and nested checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from polytask.balance.base import Balancer, GradientAggregator, GramianAggregator


class BalancerWrapper(Balancer):
    """A balancer that modifies how `inner` is applied; state and hooks pass through."""

    def __init__(self, inner: Balancer) -> None:
        self.inner = inner
        super().__init__()
        self.needs_all_tasks = inner.needs_all_tasks  # type: ignore[misc]
        self.supports_features = inner.supports_features  # type: ignore[misc]

    @property  # type: ignore[override]
    def record_gramian(self) -> bool:
        return self.inner.record_gramian

    @record_gramian.setter
    def record_gramian(self, value: bool) -> None:
        self.inner.record_gramian = value

    @property  # type: ignore[override]
    def last_gramian(self) -> Tensor | None:
        return self.inner.last_gramian

    @last_gramian.setter
    def last_gramian(self, value: Tensor | None) -> None:
        self.inner.last_gramian = value

    def setup(self, task_names: Sequence[str]) -> None:
        super().setup(task_names)
        self.inner.setup(task_names)

    def parameters(self) -> list[nn.Parameter]:
        return self.inner.parameters()

    def after_step(self, recompute_losses: Callable[[], Mapping[str, Tensor]]) -> None:
        self.inner.after_step(recompute_losses)

    def reset(self) -> None:
        self.inner.reset()

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])


def require_aggregator(balancer: Balancer, what: str) -> GradientAggregator:
    """`balancer` if it maps a gradient matrix to an update, else a clear error."""
    if not isinstance(balancer, GradientAggregator):
        raise ValueError(
            f"{what} needs a gradient aggregator (a method over per-task gradients); "
            f"{type(balancer).__name__} is not one"
        )
    return balancer


def gramian_weights(
    aggregator: GradientAggregator, jacobian: Tensor, need_gramian: bool = False
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The update `aggregate(J)`, for a Gramian method the weights that produced it, and the
    Gramian `J Jᵀ` (for a Gramian method, always: it is computed anyway; else only when
    `need_gramian`)."""
    if isinstance(aggregator, GramianAggregator):
        gramian = (jacobian @ jacobian.T).detach()
        w = aggregator.weights(gramian).to(jacobian.dtype)
        return w @ jacobian, w, gramian
    gramian = (jacobian @ jacobian.T).detach() if need_gramian else None
    return aggregator.aggregate(jacobian), None, gramian
