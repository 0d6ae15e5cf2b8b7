"""`multilora`: several parallel LoRAs with learned scaling factors (Wang et al. 2023)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from polytask.errors import ConfigError
from polytask.models.adapters.base import (
    ADAPTERS,
    AdaptedLinear,
    Adapter,
    RoutingState,
    kaiming_uniform_,
)


class MultiLoRALinear(AdaptedLinear):
    """ΔW x = (alpha / r) Σ_i s_i ⊙ (B_i A_i x), s_i a learned per-output scaling vector."""

    def __init__(self, base_layer: nn.Linear, routing: RoutingState, dropout: float,
                 num_loras: int, r: int, scaling: float) -> None:
        super().__init__(base_layer, routing, dropout)
        self.scaling = scaling
        self.lora_A = nn.Parameter(kaiming_uniform_(torch.empty(num_loras, r, self.in_features)))
        self.lora_B = nn.Parameter(kaiming_uniform_(torch.empty(num_loras, self.out_features, r)))
        self.lora_scale = nn.Parameter(torch.zeros(num_loras, self.out_features))

    def _stacked(self) -> tuple[Tensor, Tensor]:
        """All modules side by side: A (n r x d_in) and the scaled B (d_out x n r), so the
        sum over modules is one pair of matmuls (horizontal scaling)."""
        n, d_out, r = self.lora_B.shape
        down = self.lora_A.reshape(n * r, self.in_features)
        up = (self.lora_scale.unsqueeze(-1) * self.lora_B).permute(1, 0, 2).reshape(d_out, n * r)
        return down, up

    def delta(self, x: Tensor) -> Tensor:
        down, up = self._stacked()
        return (x @ down.T) @ up.T * self.scaling

    def delta_weight(self, task: int) -> Tensor:
        del task  # one path shared by every task
        down, up = self._stacked()
        return up @ down * self.scaling


@ADAPTERS.register("multilora", paper="MultiLoRA: Democratizing LoRA for Better Multi-Task "
                                      "Learning (Wang et al., arXiv 2311.11501, 2023)")
class MultiLoRA(Adapter):
    """`num_loras` parallel LoRA modules per adapted layer (LoRA scaled horizontally), each
    with a learned scaling factor, shared by every task.

    Wang et al., "MultiLoRA: Democratizing LoRA for Better Multi-Task Learning" (arXiv
    2311.11501, 2023): ΔW = (alpha / r) Σ_i diag(s_i) B_i A_i. Its initialisation lowers the
    dependency between the parameters: A_i and B_i both Kaiming-uniform, the scaling factors
    s_i (one per output unit, as in the MTL-LoRA authors' reproduction) zero, so training
    starts from the pretrained model. No part is task-private.

    Trainable parameters: Σ over adapted layers of n (r (d_in + d_out) + d_out), with
    n = `num_loras`.
    """

    task_routed = False

    def __init__(self, task_names: Sequence[str], r: int = 8, alpha: float = 16.0,
                 dropout: float = 0.0,
                 target_modules: Sequence[str] | str = ("query", "value"),
                 num_loras: int = 3) -> None:
        super().__init__(task_names, r, alpha, dropout, target_modules)
        if num_loras < 1:
            raise ConfigError(f"model.adapter.num_loras: needs at least 1 LoRA, got {num_loras}")
        self.num_loras = num_loras

    def wrap(self, name: str, index: int, layer: nn.Linear) -> nn.Module:
        del name, index
        return MultiLoRALinear(layer, self.routing, self.dropout, self.num_loras, self.r,
                               self.scaling)

    @classmethod
    def trainable_count(cls, layers: Mapping[str, tuple[int, int]], num_tasks: int,
                        **options: Any) -> int:
        del num_tasks
        r, n = options.get("r", 8), options.get("num_loras", 3)
        return sum(n * (r * (d_in + d_out) + d_out) for d_in, d_out in layers.values())
