"""polytask.balance: turn T task losses into one update, usable in any training loop.

    import polytask.balance as balance
    balancer = balance.get("pcgrad")
    balancer.setup(task_names)
    balancer.backward(losses_by_task, shared_params)   # fills .grad
    optimizer.step()
"""

from polytask.balance import aggregation, weighting, wrappers
from polytask.balance.base import (
    BALANCERS,
    Balancer,
    GradientAggregator,
    GramianAggregator,
    LossWeighting,
    get,
    names,
)

__all__ = [
    "BALANCERS",
    "Balancer",
    "GradientAggregator",
    "GramianAggregator",
    "LossWeighting",
    "aggregation",
    "get",
    "names",
    "weighting",
    "wrappers",
]
