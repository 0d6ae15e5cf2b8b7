"""The pure methods: task losses, or the Gramian, or task gradients in; weights or an update out.

Three families (see DESIGN.md); none of them touches `.grad` or autograd: the engine
(`polytask.balance.engine.backward`) does all the gradient work once and calls the method.

* a `LossWeighting` maps the loss vector (and its own state) to task weights, with
  `loss_weights(losses, names)`; the engine back-propagates `objective(losses, weights)`;
* a `GramianWeighting` maps the T x T Gramian of the task gradients of the shared
  parameters to task weights, with `gramian_weights(gramian)`; the update is `wᵀJ`;
* a `JacobianAggregator` maps the T x P per-task gradients to one update, with
  `aggregate(jacobian)` (or, for methods acting per coordinate, `column_aggregator`,
  which the engine feeds a block of columns at a time).

Stateful methods implement `state_dict`/`load_state_dict` (checkpoints) and `reset`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from polytask.registry import Registry

#: Every method, by name (its class; `polytask.balance.get` builds it with engine options).
BALANCERS: Registry[type[Method]] = Registry("balancer")


class Method:
    """What every method shares: task names, learnable parameters, hooks and state."""

    #: True when every task must contribute a loss at every step (gradient methods, and
    #: weightings that compare all losses). The config rejects such a method with a
    #: sampler that feeds one task per step.
    needs_all_tasks: ClassVar[bool] = False
    #: True when the method can run on the task gradients w.r.t. the shared representation
    #: (the engine's `representation` option, MGDA-UB style).
    supports_features: ClassVar[bool] = False

    def __init__(self) -> None:
        self.task_names: list[str] = []

    def setup(self, task_names: Sequence[str]) -> None:
        """Called once with the run's task names before training (and before `parameters`)."""
        self.task_names = list(task_names)

    def task_index(self, names: Sequence[str]) -> list[int]:
        """Positions of `names` among the run's tasks (set up from `names` on first use)."""
        if not self.task_names:
            self.setup(names)
        unknown = [n for n in names if n not in self.task_names]
        if unknown:
            raise KeyError(
                f"losses for tasks {unknown} that setup() was not given; "
                f"the balancer knows {self.task_names}"
            )
        return [self.task_names.index(n) for n in names]

    def parameters(self) -> list[nn.Parameter]:
        """Learnable parameters of the method itself (e.g. uncertainty log-variances)."""
        return []

    def after_step(self, recompute_losses: Callable[[], Mapping[str, Tensor]]) -> None:
        """Hook run after the optimizer step; `recompute_losses()` re-evaluates the same batch
        without gradients (used by methods such as FAMO). Default: nothing."""
        del recompute_losses

    def reset(self) -> None:
        """Forget all state accumulated during training."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        del state


class LossWeighting(Method, ABC):
    """A method that only needs loss values: `loss_weights(losses, names) -> w`."""

    @abstractmethod
    def loss_weights(self, losses: Tensor, names: Sequence[str]) -> Tensor:
        """Task weights for this step. Detached unless the method learns through them."""

    def objective(self, losses: Tensor, weights: Tensor) -> Tensor:
        """The scalar that is back-propagated. Methods with a regulariser override this."""
        return (weights * losses).sum()

    def gradient_probe(self, shared_params: Sequence[Tensor]) -> list[Tensor]:
        """Shared parameters whose per-task gradient Gramian the method wants to observe
        before `loss_weights` (GradNorm: the last shared weight matrix). Default: none."""
        del shared_params
        return []

    def observe_gramian(self, gramian: Tensor, losses: Tensor) -> None:
        """Receive the Gramian of the task gradients of `gradient_probe`'s parameters."""
        del gramian, losses


class GramianWeighting(Method, ABC):
    """A method whose update is `gramian_weights(J Jᵀ) @ J`: the engine computes the T x T
    Gramian without materialising J where cheaper (see `polytask.balance.gramian`) and
    forms the update from the same factors, with no second backward pass."""

    needs_all_tasks = True
    supports_features = True

    @abstractmethod
    def gramian_weights(self, gramian: Tensor) -> Tensor:
        """Task weights (a T-vector) from the T x T Gramian of the task gradients."""


class JacobianAggregator(Method, ABC):
    """A method over the T x P matrix of per-task gradients of the shared parameters."""

    needs_all_tasks = True
    supports_features = True

    @abstractmethod
    def aggregate(self, jacobian: Tensor) -> Tensor:
        """Map the T x P Jacobian to one P-vector (the update direction, before the lr)."""

    def column_aggregator(self, columns: int) -> Callable[[Tensor, int], Tensor] | None:
        """For a method that acts on each column alone: a function `(block, first) ->
        update` of a T x n block of columns starting at column `first` (the block may be
        overwritten), valid for one step of `columns` columns; the engine then never forms
        the T x P matrix. None (default): the engine calls `aggregate` on the whole matrix."""
        del columns
        return None

    def tasks_for_step(self, names: Sequence[str]) -> list[str]:
        """The tasks whose gradients this step needs (default: all of them)."""
        return list(names)


def make_generator(generator: torch.Generator | None) -> torch.Generator:
    """The generator a random method draws from: the one given, else a new CPU generator
    seeded from torch's global RNG (so seeding the run makes the method reproducible)."""
    if generator is not None:
        return generator
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64).item())
    return torch.Generator().manual_seed(seed)


def names() -> list[str]:
    """Every registered method name."""
    return BALANCERS.names()
