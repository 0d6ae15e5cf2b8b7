"""Which process this is among the ones torchrun started: the one place that answers
"is this the main process?" (the one that writes files, logs and prints results), and the
`World` (rank, size and the collectives) that training and evaluation share.

It lives below `polytask.train` and `polytask.evaluate` so that both, the CLI and the
callbacks can ask without importing the training machinery."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


def is_main_process() -> bool:
    """True in a run without torchrun, and in the first process (`RANK` 0) under torchrun;
    it agrees with the `World` that `init_world` builds from the same environment."""
    return int(os.environ.get("WORLD_SIZE", "1")) <= 1 or int(os.environ.get("RANK", "0")) == 0


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (size 1: no distribution)."""

    rank: int = 0
    size: int = 1

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
