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

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from polytask.balance import Balancer, GradientAggregator, GramianAggregator
from polytask.balance.base import accumulate_flat, start_backward
from polytask.balance.jacobian import task_jacobian
from polytask.balance.wrappers.base import BalancerWrapper
from polytask.errors import ConfigError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (size 1: no distribution)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def mean_(self, tensor: Tensor) -> Tensor:
        """All-reduce `tensor` in place to its mean over ranks."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor.div_(self.size)
        return tensor

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when `flag` is true on at least one (so all decide alike)."""
        if not self.distributed:
            return flag
        return float(self.mean_(torch.tensor([float(flag)], device=device))) > 0

    def mean_grads(self, params: Sequence[Tensor]) -> None:
        """Average the `.grad` of `params` over ranks with one flat all-reduce."""
        if not self.distributed or not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self.mean_(torch.cat([g.reshape(-1) for g in grads]))
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def broadcast_module(self, module: nn.Module) -> None:
        """Make every rank start from rank 0's parameters and buffers."""
        if self.distributed:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order (picklable objects)."""
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def shard(self, n: int) -> range:
        """This rank's contiguous share of `n` items (shares differ by at most one)."""
        per, extra = divmod(n, self.size)
        start = self.rank * per + min(self.rank, extra)
        return range(start, start + per + (1 if self.rank < extra else 0))


def init_world(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun describes in the environment (if any)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), device
    rank = int(os.environ["RANK"])
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return World(rank, size), device


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
        super().__init__()
        if isinstance(inner, BalancerWrapper):
            raise ConfigError("balancer: wrappers (representation, update_every, sparse, "
                              "sam_rho) are not supported under torchrun yet; drop the option")
        if isinstance(inner, GradientAggregator) and type(inner).backward not in (
                GradientAggregator.backward, GramianAggregator.backward):
            raise ConfigError(f"balancer: {type(inner).__name__} has its own backward and "
                              "cannot be reduced across ranks yet; use it on one process")
        self.inner = inner
        self.world = world
        self.needs_all_tasks = inner.needs_all_tasks  # type: ignore[misc]
        self.supports_features = False  # type: ignore[misc]
        self._local: list[Tensor] = []

    def setup(self, task_names: Sequence[str]) -> None:
        super().setup(task_names)
        self.inner.setup(task_names)

    def parameters(self) -> list[nn.Parameter]:
        return self.inner.parameters()

    def set_closure(self, closure: Callable[[], Mapping[str, Tensor]]) -> None:
        self.inner.set_closure(lambda: _global_values(closure(), self.world))

    def backward(
        self,
        losses: Mapping[str, Tensor],
        shared_params: Sequence[Tensor],
        features: Tensor | None = None,
        task_params: Sequence[Tensor] | None = None,
    ) -> dict[str, float]:
        del features
        if not isinstance(self.inner, GradientAggregator):
            self._local = [p for p in shared_params if p.requires_grad]
            self._local += list(task_params or [])
            return self.inner.backward(_global_values(losses, self.world), shared_params,
                                       None, task_params)
        names, vector, params = start_backward(losses, shared_params, task_params)
        self._local = list(task_params or [])
        jacobian = self.world.mean_(task_jacobian(vector, params))
        gramian = jacobian @ jacobian.T
        self.inner.last_gramian = gramian.detach()
        if isinstance(self.inner, GramianAggregator):
            weights = self.inner.weights(gramian).to(jacobian.dtype)
            accumulate_flat(params, weights @ jacobian)
            return dict(zip(names, weights.tolist(), strict=True))
        accumulate_flat(params, self.inner.aggregate(jacobian))
        return {}

    def finish_step(self, method_params: Sequence[Tensor]) -> None:
        """Average the rank-local gradients (task-specific ones, and all of a weighting's)."""
        self.world.mean_grads([*self._local, *method_params])

    @property  # type: ignore[override]
    def last_gramian(self) -> Tensor | None:
        return self.inner.last_gramian

    @last_gramian.setter
    def last_gramian(self, value: Tensor | None) -> None:
        del value  # the inner balancer owns it

    @property  # type: ignore[override]
    def record_gramian(self) -> bool:
        return self.inner.record_gramian

    @record_gramian.setter
    def record_gramian(self, value: bool) -> None:
        if hasattr(self, "inner"):
            self.inner.record_gramian = value

    def after_step(self, recompute_losses: Callable[[], Mapping[str, Tensor]]) -> None:
        self.inner.after_step(lambda: _global_values(recompute_losses(), self.world))

    def reset(self) -> None:
        self.inner.reset()

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.inner.load_state_dict(state)
