"""`task_lora`: one LoRA per task, trained jointly, each example routed to its task's LoRA."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from polytask.models.adapters.base import (
    ADAPTERS,
    AdaptedLinear,
    Adapter,
    RoutingState,
    batched_matmul,
    kaiming_uniform_,
    per_sample,
)


class PerTaskLowRank(nn.Module):
    """T low-rank pairs (A_t: r x d_in, Kaiming-uniform; B_t: d_out x r, zero), one
    parameter each so that a task's pair is its own parameters, applied per sample by one
    gather over the stacked (T, ...) tensors."""

    def __init__(self, num_tasks: int, r: int, d_in: int, d_out: int) -> None:
        super().__init__()
        self.lora_A = nn.ParameterList(
            nn.Parameter(kaiming_uniform_(torch.empty(r, d_in))) for _ in range(num_tasks))
        self.lora_B = nn.ParameterList(
            nn.Parameter(torch.zeros(d_out, r)) for _ in range(num_tasks))

    def forward(self, x: Tensor, task_ids: Tensor) -> Tensor:
        """B_t A_t x for each row's task t: x (N, ..., d_in), task_ids (N,)."""
        a = per_sample(torch.stack(tuple(self.lora_A)), task_ids)  # N x r x d_in
        b = per_sample(torch.stack(tuple(self.lora_B)), task_ids)  # N x d_out x r
        return batched_matmul(batched_matmul(x, a.transpose(1, 2)), b.transpose(1, 2))

    def task_parameters(self, task: int) -> Iterator[nn.Parameter]:
        yield self.lora_A[task]
        yield self.lora_B[task]

    def delta_weight(self, task: int) -> Tensor:
        return self.lora_B[task] @ self.lora_A[task]


class TaskLoRALinear(AdaptedLinear):
    """A frozen linear layer plus one LoRA per task, picked per row by its task id."""

    def __init__(self, base_layer: nn.Linear, routing: RoutingState, dropout: float,
                 num_tasks: int, r: int, scaling: float) -> None:
        super().__init__(base_layer, routing, dropout)
        self.lora = PerTaskLowRank(num_tasks, r, self.in_features, self.out_features)
        self.scaling = scaling

    def delta(self, x: Tensor) -> Tensor:
        return self.lora(x, self.routing.require_task_ids("task_lora", x)) * self.scaling

    def task_parameters(self, task: int) -> Iterator[nn.Parameter]:
        return self.lora.task_parameters(task)

    def delta_weight(self, task: int) -> Tensor:
        return self.lora.delta_weight(task) * self.scaling


@ADAPTERS.register("task_lora", paper="LoRA: Low-Rank Adaptation of Large Language Models "
                                      "(Hu et al., ICLR 2022), one per task, routed per sample")
class TaskLoRA(Adapter):
    """One LoRA per task in each adapted layer, all trained jointly in one model; every
    example goes through its own task's LoRA in the same forward (per-sample routing).

    Each task's update is LoRA's (Hu et al., "LoRA: Low-Rank Adaptation of Large Language
    Models", ICLR 2022): ΔW_t = (alpha / r) B_t A_t, with A_t Kaiming-uniform and B_t zero
    (PEFT's initialisation). Task t's A_t and B_t are private to it: another task's loss
    gives them zero gradient. The equivalent PEFT model is one LoRA adapter per task.

    Trainable parameters: T · Σ over adapted layers of r (d_in + d_out).
    """

    def wrap(self, name: str, index: int, layer: nn.Linear) -> nn.Module:
        del name, index
        return TaskLoRALinear(layer, self.routing, self.dropout, len(self.task_names),
                              self.r, self.scaling)

    @classmethod
    def trainable_count(cls, layers: Mapping[str, tuple[int, int]], num_tasks: int,
                        **options: Any) -> int:
        r = options.get("r", 8)
        return num_tasks * sum(r * (d_in + d_out) for d_in, d_out in layers.values())
