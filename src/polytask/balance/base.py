"""The balancer interface: T task losses in, one update of the shared parameters out.

Two families share one interface (see DESIGN.md):

* a `LossWeighting` maps the loss vector (and its history) to task weights and does one
  backward pass of the weighted sum; it never needs per-task gradients;
* a `GradientAggregator` maps the T x P matrix of per-task gradients of the shared
  parameters (the Jacobian) to one update vector; a `GramianAggregator` is one whose
  update is `w @ J` with weights that depend only on the Gramian `J @ J.T`, which lets it
  skip materialising the Jacobian.

Contract of `Balancer.backward(losses, shared_params, features=None, task_params=None)`:

* it *accumulates* into `.grad` (like `Tensor.backward`), so gradient accumulation works;
* shared parameters receive the combined update;
* task-specific parameters receive their own task's gradient: weightings give them
  `w_t * grad L_t` (the gradient of the weighted sum, as in the papers); aggregators give
  them the unweighted `grad L_t` so that a task weighted 0 by the aggregator still trains
  its head (as in MGDA-UB, Sener & Koltun 2018);
* `task_params` lists the task-specific parameters; when it is None they are found by a
  backward of the loss sum, and the shared gradients are then replaced by the update;
* it returns the per-task weights it applied (for logging), keyed by task name;
* `features`, the shared representation, is a hint for aggregators at the parameter level:
  when every path from the losses to the shared parameters goes through it, the per-task
  gradients are back-propagated from there (T cheap passes through the heads, then one
  batched backward through the trunk) instead of pushing T rows through every head.

Stateful methods implement `state_dict`/`load_state_dict` (checkpoints) and `reset`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from polytask.balance.gramian import TaskGradients
from polytask.registry import Registry

BALANCERS: Registry[type[Balancer]] = Registry("balancer")


class Balancer(ABC):
    """Turns a dict of task losses into gradients. Subclasses are registered in `BALANCERS`."""

    #: True when every task must contribute a loss at every step (gradient methods, and
    #: weightings that compare all losses). The config rejects such a balancer with a
    #: sampler that feeds one task per step.
    needs_all_tasks: ClassVar[bool] = False
    #: True when `backward` can work on the gradients w.r.t. the shared representation
    #: (`features`) instead of the shared parameters (MGDA-UB style).
    supports_features: ClassVar[bool] = False

    def __init__(self) -> None:
        self.task_names: list[str] = []
        #: Set by the caller before a `backward` whose task-gradient Gramian it wants to see
        #: (e.g. to log gradient conflicts); methods that see per-task gradients then leave
        #: the T x T Gramian in `last_gramian` (else None). Gramian methods always do.
        self.record_gramian = False
        self.last_gramian: Tensor | None = None

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

    @abstractmethod
    def backward(
        self,
        losses: Mapping[str, Tensor],
        shared_params: Sequence[Tensor],
        features: Tensor | None = None,
        task_params: Sequence[Tensor] | None = None,
    ) -> dict[str, float]:
        """Accumulate the balanced update into `.grad`; return the task weights applied."""

    def set_closure(self, closure: Callable[[], Mapping[str, Tensor]]) -> None:
        """Receive, before each `backward`, a function that re-evaluates the current batch's
        losses with gradients (for methods that probe perturbed weights, such as per-task
        SAM). Default: ignored."""
        del closure

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


def make_generator(generator: torch.Generator | None) -> torch.Generator:
    """The generator a random method draws from: the one given, else a new CPU generator
    seeded from torch's global RNG (so seeding the run makes the method reproducible)."""
    if generator is not None:
        return generator
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64).item())
    return torch.Generator().manual_seed(seed)


def stack_losses(losses: Mapping[str, Tensor]) -> tuple[list[str], Tensor]:
    """Task names and the loss vector, in the dict's order."""
    names = list(losses)
    return names, torch.stack([losses[n].reshape(()) for n in names])


def backward_task_specific(
    losses: Tensor,
    shared_params: Sequence[Tensor],
    task_params: Sequence[Tensor] | None,
) -> None:
    """Give each task-specific parameter the gradient of its own task's loss.

    With `task_params` given, one backward restricted to them (autograd prunes the shared
    trunk, so this costs only the heads). Without, a full backward of the loss sum, after
    which the shared parameters' gradients are restored to what they were before.
    """
    total = losses.sum()
    if task_params is not None:
        if task_params:
            torch.autograd.backward(total, inputs=list(task_params), retain_graph=True)
        return
    before = [None if p.grad is None else p.grad.clone() for p in shared_params]
    total.backward(retain_graph=True)
    for p, g in zip(shared_params, before, strict=True):
        p.grad = g


def start_backward(
    losses: Mapping[str, Tensor],
    shared_params: Sequence[Tensor],
    task_params: Sequence[Tensor] | None,
) -> tuple[list[str], Tensor, list[Tensor]]:
    """What every per-task-gradient method does first: the task names, the loss vector and
    the trainable shared parameters; task-specific parameters get their own gradients."""
    names, vector = stack_losses(losses)
    params = [p for p in shared_params if p.requires_grad]
    backward_task_specific(vector, params, task_params)
    return names, vector, params


def accumulate_flat(params: Sequence[Tensor], update: Tensor) -> None:
    """Add a flat update vector into the `.grad` of `params` (in order)."""
    offset = 0
    for p in params:
        n = p.numel()
        chunk = update[offset : offset + n].view_as(p)
        p.grad = chunk.clone() if p.grad is None else p.grad.add_(chunk)
        offset += n
    if offset != update.numel():
        raise ValueError(f"update has {update.numel()} entries, parameters have {offset}")


class LossWeighting(Balancer):
    """A balancer that only needs loss values: `weights(losses) -> w`, then one backward."""

    @abstractmethod
    def weights(self, losses: Tensor, names: Sequence[str]) -> Tensor:
        """Task weights for this step. Detached unless the method learns through them."""

    def combine(self, losses: Tensor, weights: Tensor) -> Tensor:
        """The scalar that is back-propagated. Methods with a regulariser override this."""
        return (weights * losses).sum()

    def backward(
        self,
        losses: Mapping[str, Tensor],
        shared_params: Sequence[Tensor],
        features: Tensor | None = None,
        task_params: Sequence[Tensor] | None = None,
    ) -> dict[str, float]:
        del shared_params, features, task_params  # one backward reaches every parameter
        self.last_gramian = None  # a weighting never sees per-task gradients
        names, vector = stack_losses(losses)
        w = self.weights(vector, names)
        self.combine(vector, w).backward()
        return dict(zip(names, w.detach().tolist(), strict=True))


class GradientAggregator(Balancer):
    """A balancer over the Jacobian: rows are the per-task gradients of the shared params."""

    needs_all_tasks = True
    supports_features = True

    @abstractmethod
    def aggregate(self, jacobian: Tensor) -> Tensor:
        """Map the T x P Jacobian to one P-vector (the update direction, before the lr)."""

    def backward(
        self,
        losses: Mapping[str, Tensor],
        shared_params: Sequence[Tensor],
        features: Tensor | None = None,
        task_params: Sequence[Tensor] | None = None,
    ) -> dict[str, float]:
        names, _vector, params = start_backward(losses, shared_params, task_params)
        jacobian = TaskGradients([losses[n] for n in names], params, features).jacobian()
        self.last_gramian = (jacobian @ jacobian.T).detach() if self.record_gramian else None
        accumulate_flat(params, self.aggregate(jacobian))
        return {}


class GramianAggregator(GradientAggregator):
    """An aggregator whose update is `weights(J Jᵀ) @ J`.

    `backward` computes the T x T Gramian (without materialising J where cheaper, see
    `polytask.balance.gramian`), solves for the weights, and forms the update `wᵀJ` from the
    same factors, with no second backward pass.
    """

    @abstractmethod
    def weights(self, gramian: Tensor) -> Tensor:
        """Task weights (a T-vector) from the T x T Gramian of the task gradients."""

    def aggregate(self, jacobian: Tensor) -> Tensor:
        return self.weights(jacobian @ jacobian.T) @ jacobian

    def backward(
        self,
        losses: Mapping[str, Tensor],
        shared_params: Sequence[Tensor],
        features: Tensor | None = None,
        task_params: Sequence[Tensor] | None = None,
    ) -> dict[str, float]:
        names, vector, params = start_backward(losses, shared_params, task_params)
        gradients = TaskGradients([losses[n] for n in names], params, features)
        gramian = gradients.gramian()
        self.last_gramian = gramian.detach()
        w = self.weights(gramian).to(vector.dtype)
        gradients.accumulate(w.detach())
        return dict(zip(names, w.tolist(), strict=True))


@dataclass(frozen=True)
class WrapperOption:
    """A `get` keyword that wraps any balancer (e.g. `update_every=5`): `wrap(balancer,
    value)` returns the wrapped balancer, or the same one when the value means "off".
    Options apply in increasing `order` (inner wrappers first)."""

    order: int
    wrap: Callable[[Balancer, Any], Balancer]


#: Wrapper options understood by `get`, filled by the modules of `polytask.balance.wrappers`.
WRAPPERS: dict[str, WrapperOption] = {}


def get(name: str, **hyperparameters: Any) -> Balancer:
    """Build a registered balancer: `polytask.balance.get("cagrad", c=0.4)`.

    Keywords naming a wrapper (`representation`, `update_every`, `sparse`, `sam_rho`; see
    `polytask.balance.wrappers`) wrap the method; the others go to its constructor.
    """
    options = {k: hyperparameters.pop(k) for k in list(hyperparameters) if k in WRAPPERS}
    balancer = BALANCERS.get(name)(**hyperparameters)
    for key in sorted(options, key=lambda k: WRAPPERS[k].order):
        balancer = WRAPPERS[key].wrap(balancer, options[key])
    return balancer


def names() -> list[str]:
    """Every registered balancer name."""
    return BALANCERS.names()
