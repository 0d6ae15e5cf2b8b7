"""`mtl_lora`: shared A, task-specific r x r transform, shared B's mixed per task (Yang et al.)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from polytask.errors import ConfigError
from polytask.models.adapters.base import (
    ADAPTERS,
    AdaptedLinear,
    Adapter,
    RoutingState,
    batched_matmul,
    kaiming_uniform_,
    per_sample,
)


class MTLLoRALinear(AdaptedLinear):
    """ΔW_t x = (alpha / r) Σ_i softmax(w_t / τ)_i B_i Λ_t A x, per row's task t."""

    def __init__(self, base_layer: nn.Linear, routing: RoutingState, dropout: float,
                 num_tasks: int, r: int, scaling: float, num_up: int, temperature: float,
                 diagonal: bool) -> None:
        super().__init__(base_layer, routing, dropout)
        self.scaling = scaling
        self.temperature = temperature
        self.diagonal = diagonal
        self.lora_A = nn.Parameter(kaiming_uniform_(torch.empty(r, self.in_features)))
        self.lora_B = nn.Parameter(torch.zeros(num_up, self.out_features, r))
        start = torch.ones(r) if diagonal else torch.eye(r)
        self.lambdas = nn.ParameterList(nn.Parameter(start.clone()) for _ in range(num_tasks))
        bound = 1 / math.sqrt(num_up)  # Kaiming-uniform over a (T, n) matrix, as the paper's
        self.mix = nn.ParameterList(nn.Parameter(torch.empty(num_up).uniform_(-bound, bound))
                                    for _ in range(num_tasks))

    def _lambda(self, stacked: Tensor) -> Tensor:
        return torch.diag_embed(stacked) if self.diagonal else stacked

    def _task_up(self) -> Tensor:
        """Each task's mixed up-projection: T x d_out x r."""
        weights = torch.softmax(torch.stack(tuple(self.mix)) / self.temperature, dim=-1)
        return torch.einsum("tn,nor->tor", weights, self.lora_B)

    def delta(self, x: Tensor) -> Tensor:
        ids = self.routing.require_task_ids("mtl_lora", x)
        down = x @ self.lora_A.T
        lambdas = per_sample(self._lambda(torch.stack(tuple(self.lambdas))), ids)
        up = per_sample(self._task_up(), ids)
        return batched_matmul(batched_matmul(down, lambdas.transpose(1, 2)),
                              up.transpose(1, 2)) * self.scaling

    def task_parameters(self, task: int) -> Iterator[nn.Parameter]:
        yield self.lambdas[task]
        yield self.mix[task]

    def delta_weight(self, task: int) -> Tensor:
        lam = torch.diag(self.lambdas[task]) if self.diagonal else self.lambdas[task]
        return self._task_up()[task] @ lam @ self.lora_A * self.scaling


@ADAPTERS.register("mtl_lora", paper="MTL-LoRA: Low-Rank Adaptation for Multi-Task Learning "
                                     "(Yang et al., AAAI 2025; arXiv 2410.09437, 2024)")
class MTLLoRA(Adapter):
    """A shared down-projection A, a task-specific r x r transform Λ_t, and `num_up` shared
    up-projections B_i mixed by task-specific learned weights.

    Yang et al., "MTL-LoRA: Low-Rank Adaptation for Multi-Task Learning" (arXiv 2410.09437,
    2024; AAAI 2025): h_t = W x + (alpha / r) Σ_i [exp(w_t^i / τ) / Σ_j exp(w_t^j / τ)]
    B_i Λ_t A x. As in the authors' code, A is Kaiming-uniform, B_i zero, Λ_t the identity
    (`diagonal: true` keeps only its diagonal, initialised to ones) and w_t Kaiming-uniform.
    Λ_t and w_t are private to task t; A and the B_i are shared.

    Trainable parameters: Σ over adapted layers of
    r d_in + n d_out r + T (r² or r if diagonal) + T n, with n = `num_up`.
    """

    def __init__(self, task_names: Sequence[str], r: int = 8, alpha: float = 16.0,
                 dropout: float = 0.0,
                 target_modules: Sequence[str] | str = ("query", "value"),
                 num_up: int = 3, temperature: float = 1.0, diagonal: bool = False) -> None:
        super().__init__(task_names, r, alpha, dropout, target_modules)
        if num_up < 1:
            raise ConfigError(f"model.adapter.num_up: needs at least 1 up-projection, "
                              f"got {num_up}")
        if temperature <= 0:
            raise ConfigError(f"model.adapter.temperature: must be positive, got {temperature}")
        self.num_up = num_up
        self.temperature = temperature
        self.diagonal = diagonal

    def wrap(self, name: str, index: int, layer: nn.Linear) -> nn.Module:
        del name, index
        return MTLLoRALinear(layer, self.routing, self.dropout, len(self.task_names), self.r,
                             self.scaling, self.num_up, self.temperature, self.diagonal)

    @classmethod
    def trainable_count(cls, layers: Mapping[str, tuple[int, int]], num_tasks: int,
                        **options: Any) -> int:
        r, n = options.get("r", 8), options.get("num_up", 3)
        transform = r if options.get("diagonal", False) else r * r
        return sum(r * d_in + n * d_out * r + num_tasks * (transform + n)
                   for d_in, d_out in layers.values())
