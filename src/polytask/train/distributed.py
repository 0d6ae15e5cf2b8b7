"""Data-parallel training on torch.distributed, launched by torchrun (gloo on CPU, nccl on GPU).

Why not the `DistributedDataParallel` module: DDP all-reduces the gradient of the summed
loss during backward, but a gradient balancer must see every task's gradient of the
*combined* batch before it aggregates. polytask therefore reduces exactly once, in the
right place, with the same collectives DDP uses:

* gradient aggregators (PCGrad, MGDA, ...): each rank's per-task Jacobian of the shared
  parameters is averaged across ranks, so every rank aggregates the Jacobian of the combined
  batch and takes the identical step (the update is not all-reduced again);
* loss weightings: the loss values the weights are computed from are averaged across ranks
  (a loss keeps its rank-local gradient but takes the global value), so every rank picks the
  same weights; the weighted gradients are then averaged once per optimizer step;
* task-specific parameters' gradients are averaged once per optimizer step.

With equal per-rank batches this equals a single process on the combined batch (the global
batch is `batch_size x world size`, each rank reading its slice of the same shuffled order).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from polytask.balance import Balancer, BalanceResult, JacobianAggregator, LossWeighting, Options
from polytask.balance.engine import backward as balance_backward
from polytask.balance.jacobian import task_jacobian
from polytask.errors import ConfigError
from polytask.process import World


def _global_values(losses: Mapping[str, Tensor], world: World) -> dict[str, Tensor]:
    """Losses whose values are the mean over ranks but whose gradients stay local."""
    names = list(losses)
    values = world.mean_(torch.stack([losses[n].detach().reshape(()) for n in names]))
    return {n: losses[n] - losses[n].detach() + values[i] for i, n in enumerate(names)}


class DistributedBalancer(Balancer):
    """Runs `inner` so that every rank takes the step of the combined batch (see module doc).

    `finish_step(params)` must be called once per optimizer step, before clipping, with all
    trainable parameters: it averages the gradients that are still rank-local.
    """

    def __init__(self, inner: Balancer, world: World) -> None:
        if inner.options != Options():
            raise ConfigError("balancer: engine options (representation, update_every, "
                              "sparse, sam_rho) are not supported under torchrun yet; drop "
                              "the option")
        method = inner.method
        if isinstance(method, JacobianAggregator) and (
                type(method).tasks_for_step is not JacobianAggregator.tasks_for_step):
            raise ConfigError(f"balancer: {type(method).__name__} uses some tasks' gradients "
                              "per step and cannot be reduced across ranks yet; use it on "
                              "one process")
        super().__init__(method)
        self.state = inner.state
        self.world = world
        self._local: list[Tensor] = []

    def set_closure(self, closure: Callable[[], Mapping[str, Tensor]]) -> None:
        super().set_closure(lambda: _global_values(closure(), self.world))

    def run(
        self,
        losses: Mapping[str, Tensor],
        shared_params: Sequence[Tensor],
        features: Tensor | None = None,
        task_params: Sequence[Tensor] | None = None,
        gramian: bool = False,
    ) -> BalanceResult:
        del features
        params = [p for p in shared_params if p.requires_grad]
        if isinstance(self.method, LossWeighting):
            self._local = [*params, *(task_params or [])]
            return balance_backward(_global_values(losses, self.world), params, self.method,
                                    task_params=task_params, gramian=gramian)
        names = list(losses)
        vector = torch.stack([losses[n].reshape(()) for n in names])
        self._local = list(task_params or [])
        if self._local:
            torch.autograd.backward(vector.sum(), inputs=self._local, retain_graph=True)
        jacobian = self.world.mean_(task_jacobian(vector, params))
        task_gramian = jacobian @ jacobian.T
        logged = task_gramian.detach() if gramian else None
        if isinstance(self.method, JacobianAggregator):
            _accumulate(params, self.method.aggregate(jacobian))
            return BalanceResult({}, logged)
        weights = self.method.gramian_weights(task_gramian).to(jacobian.dtype)
        _accumulate(params, weights @ jacobian)
        return BalanceResult(dict(zip(names, weights.tolist(), strict=True)), logged)

    def finish_step(self, method_params: Sequence[Tensor]) -> None:
        """Average the rank-local gradients (task-specific ones, and all of a weighting's)."""
        self.world.mean_grads([*self._local, *method_params])

    def after_step(self, recompute_losses: Callable[[], Mapping[str, Tensor]]) -> None:
        super().after_step(lambda: _global_values(recompute_losses(), self.world))


def _accumulate(params: Sequence[Tensor], update: Tensor) -> None:
    """Add a flat update vector into the `.grad` of `params` (in order)."""
    offset = 0
    for p in params:
        chunk = update[offset : offset + p.numel()].view_as(p)
        p.grad = chunk.clone() if p.grad is None else p.grad.add_(chunk)
        offset += p.numel()
