"""`lora`: one LoRA shared by all tasks, the baseline (PEFT's LoRA layer)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from polytask.models.adapters.base import ADAPTERS, Adapter

#: PEFT's adapter name for the one LoRA of each layer.
ADAPTER_NAME = "default"


@ADAPTERS.register("lora", paper="LoRA: Low-Rank Adaptation of Large Language Models "
                                 "(Hu et al., ICLR 2022)")
class LoRA(Adapter):
    """One low-rank update ΔW = (alpha / r) B A per adapted layer, shared by every task.

    Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022. The layer is
    PEFT's `peft.tuners.lora.layer.Linear` (A Kaiming-uniform, B zero), so the weights are
    PEFT's own and `export --format peft` writes them unchanged. No part is task-private.

    Trainable parameters: Σ over adapted layers of r (d_in + d_out).
    """

    task_routed = False

    def peft_config(self) -> Any:
        """The equivalent `peft.LoraConfig`."""
        from peft import LoraConfig

        modules = (self.target_modules if isinstance(self.target_modules, str)
                   else list(self.target_modules))
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=modules)

    def wrap(self, name: str, index: int, layer: nn.Linear) -> nn.Module:
        from peft.tuners.lora.layer import Linear

        del name, index
        return Linear(layer, ADAPTER_NAME, self.peft_config(), r=self.r, lora_alpha=self.alpha,
                      lora_dropout=self.dropout)

    def merged_delta(self, task: str) -> dict[str, Tensor]:
        self.task_index(task)
        return {f"{name}.weight": wrapper.get_delta_weight(ADAPTER_NAME).detach()
                for name, wrapper in self.wrapped.items()}

    @classmethod
    def trainable_count(cls, layers: Mapping[str, tuple[int, int]], num_tasks: int,
                        **options: Any) -> int:
        del num_tasks
        r = options.get("r", 8)
        return sum(r * (d_in + d_out) for d_in, d_out in layers.values())
