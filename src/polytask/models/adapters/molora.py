"""`molora`: per-task LoRA experts with a router (Feng et al. 2024, Mixture-of-LoRAs)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytask.models.adapters.base import (
    ADAPTERS,
    AdaptedLinear,
    Adapter,
    RoutingState,
    for_rows,
)
from polytask.models.adapters.task_lora import PerTaskLowRank

Routing = Literal["task", "learned"]


class MoLoRALinear(AdaptedLinear):
    """A frozen linear layer, one LoRA expert per task and a router over the experts.

    The router reads the layer input averaged over the example's tokens (sequence-level, as
    in the paper). Weights of the experts per example: its task's one-hot when `routing` is
    "task" and task ids are known in training; the router's softmax when "learned"; the
    router's top-1 expert at inference under "task" routing (no task id needed)."""

    def __init__(self, base_layer: nn.Linear, routing: RoutingState, dropout: float,
                 num_tasks: int, r: int, scaling: float, mode: Routing) -> None:
        super().__init__(base_layer, routing, dropout)
        self.experts = PerTaskLowRank(num_tasks, r, self.in_features, self.out_features)
        self.router = nn.Linear(self.in_features, num_tasks, bias=False)
        self.scaling = scaling
        self.mode: Routing = mode
        self.router_loss: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        logits = self.router(self._pooled(x))
        ids = self.routing.task_ids
        self.router_loss = (F.cross_entropy(logits, for_rows(ids, x))
                            if self.training and ids is not None else None)
        return self.base_layer(x) + self._experts(self.dropout(x), logits, ids).to(x.dtype)

    def delta(self, x: Tensor) -> Tensor:
        return self._experts(x, self.router(self._pooled(x)), self.routing.task_ids)

    def _pooled(self, x: Tensor) -> Tensor:
        """The input averaged over each row's real tokens (rows x d_in)."""
        if x.dim() == 2:
            return x
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        mask = self.routing.mask
        if mask is None or mask.shape[-1] != flat.shape[1]:
            return flat.mean(dim=1)
        weights = for_rows(mask.reshape(-1, mask.shape[-1]), x).to(x.dtype).unsqueeze(-1)
        return (flat * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def _experts(self, x: Tensor, logits: Tensor, task_ids: Tensor | None) -> Tensor:
        if self.mode == "learned":
            return self._mixture(x, torch.softmax(logits, dim=-1))
        chosen = (for_rows(task_ids, x) if self.training and task_ids is not None
                  else logits.argmax(dim=-1))
        return self.experts(x, chosen) * self.scaling

    def _mixture(self, x: Tensor, weights: Tensor) -> Tensor:
        """Σ_t weights_t B_t A_t x, as one pair of matmuls over the experts side by side."""
        down = torch.stack(tuple(self.experts.lora_A))  # T x r x d_in
        up = torch.stack(tuple(self.experts.lora_B))  # T x d_out x r
        num, rank = down.shape[0], down.shape[1]
        hidden = x @ down.reshape(num * rank, -1).T  # rows x ... x T r
        shape = (x.shape[0], *([1] * (x.dim() - 2)), num, 1)
        hidden = (hidden.unflatten(-1, (num, rank)) * weights.reshape(shape)).flatten(-2)
        return hidden @ up.permute(1, 0, 2).reshape(up.shape[1], num * rank).T * self.scaling

    def task_parameters(self, task: int) -> Iterator[nn.Parameter]:
        if self.mode == "task":
            yield from self.experts.task_parameters(task)


@ADAPTERS.register("molora", paper="Mixture-of-LoRAs: An Efficient Multitask Tuning for Large "
                                   "Language Models (Feng et al., LREC-COLING 2024)")
class MoLoRA(Adapter):
    """One LoRA expert per task in every adapted layer, and a router per layer that learns to
    pick the expert from the input, so inference needs no task id.

    Feng et al., "Mixture-of-LoRAs: An Efficient Multitask Tuning for Large Language Models"
    (LREC-COLING 2024). `routing: task` (the paper's explicit routing): in training each
    example uses its own task's expert, and each layer's router (a bias-free linear map of
    the token-averaged layer input to T logits) is trained with the auxiliary loss, the
    cross-entropy between its logits and the example's task (its domain label), averaged
    over the layers; at inference the router's top-1 expert is used. Expert t is then
    private to task t. `routing: learned`: experts are mixed by the router's softmax in
    training and inference alike (the auxiliary loss still pulls the router towards the
    task); no part is private. The auxiliary loss enters the total loss with weight
    `model.auxiliary_loss_weight`. The path depends on the input, so it cannot be merged.

    Trainable parameters: Σ over adapted layers of T (r (d_in + d_out) + d_in).
    """

    def __init__(self, task_names: Sequence[str], r: int = 8, alpha: float = 16.0,
                 dropout: float = 0.0,
                 target_modules: Sequence[str] | str = ("query", "value"),
                 routing: Routing = "task") -> None:
        super().__init__(task_names, r, alpha, dropout, target_modules)
        self.routing_mode: Routing = routing

    def wrap(self, name: str, index: int, layer: nn.Linear) -> nn.Module:
        del name, index
        return MoLoRALinear(layer, self.routing, self.dropout, len(self.task_names), self.r,
                            self.scaling, self.routing_mode)

    def auxiliary_loss(self) -> Tensor | None:
        losses = [w.router_loss for w in self.wrapped.values() if w.router_loss is not None]
        return torch.stack(losses).mean() if losses else None

    @classmethod
    def trainable_count(cls, layers: Mapping[str, tuple[int, int]], num_tasks: int,
                        **options: Any) -> int:
        r = options.get("r", 8)
        return sum(num_tasks * (r * (d_in + d_out) + d_in) for d_in, d_out in layers.values())
