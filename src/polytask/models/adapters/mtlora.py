"""`mtlora`: task-agnostic LoRA in shared layers, task-specific LoRA at the branching point
(Agiza et al., CVPR 2024)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from polytask.errors import ConfigError
from polytask.models.adapters.base import (
    ADAPTERS,
    AdaptedLinear,
    Adapter,
    RoutingState,
    kaiming_uniform_,
    matching_linear_names,
    per_sample,
)
from polytask.models.adapters.task_lora import PerTaskLowRank

SharedMode = Literal["matrix", "matrixv2"]
_LAYER_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def layer_index(name: str) -> int | None:
    """The first numbered segment of a qualified module name (the transformer block)."""
    found = _LAYER_INDEX.search(name)
    return int(found.group(1)) if found else None


def _scale(value: float, trainable: bool) -> nn.Parameter:
    """A scalar scale, learned or fixed (a parameter that does not require grad)."""
    return nn.Parameter(torch.tensor(float(value)), requires_grad=trainable)


class MTLoRALinear(AdaptedLinear):
    """TA-LoRA (`task_specific` False): W x + s B A x, shared by every task.
    TS-LoRA (`task_specific` True): W x + s_t B_t A_t x for each row's task t, plus the
    shared s B A x when `shared_mode` is "matrixv2"."""

    def __init__(self, base_layer: nn.Linear, routing: RoutingState, dropout: float,
                 num_tasks: int, r: int, task_specific: bool, shared_mode: SharedMode,
                 scales: tuple[float, float], trainable: tuple[bool, bool]) -> None:
        super().__init__(base_layer, routing, dropout)
        self.task_specific = task_specific
        self.has_shared = not task_specific or shared_mode == "matrixv2"
        if self.has_shared:
            self.lora_shared_A = nn.Parameter(kaiming_uniform_(torch.empty(r, self.in_features)))
            self.lora_shared_B = nn.Parameter(torch.zeros(self.out_features, r))
            self.shared_scale = _scale(scales[0], trainable[0])
        if task_specific:
            self.lora_tasks = PerTaskLowRank(num_tasks, r, self.in_features, self.out_features)
            self.task_scales = nn.ParameterList(_scale(scales[1], trainable[1])
                                                for _ in range(num_tasks))

    def delta(self, x: Tensor) -> Tensor:
        out = torch.zeros((), dtype=x.dtype, device=x.device)
        if self.has_shared:
            out = (x @ self.lora_shared_A.T) @ self.lora_shared_B.T * self.shared_scale
        if self.task_specific:
            ids = self.routing.require_task_ids("mtlora", x)
            scale = per_sample(torch.stack(tuple(self.task_scales)), ids)
            task = self.lora_tasks(x, ids)
            out = out + task * scale.reshape(-1, *([1] * (task.dim() - 1)))
        return out

    def task_parameters(self, task: int) -> Iterator[nn.Parameter]:
        if self.task_specific:
            yield from self.lora_tasks.task_parameters(task)
            if self.task_scales[task].requires_grad:
                yield self.task_scales[task]

    def delta_weight(self, task: int) -> Tensor:
        weight = torch.zeros(self.out_features, self.in_features)
        if self.has_shared:
            weight = self.lora_shared_B @ self.lora_shared_A * self.shared_scale
        if self.task_specific:
            weight = weight + self.lora_tasks.delta_weight(task) * self.task_scales[task]
        return weight


@ADAPTERS.register("mtlora", paper="MTLoRA: Low-Rank Adaptation Approach for Efficient "
                                   "Multi-Task Learning (Agiza et al., CVPR 2024)")
class MTLoRA(Adapter):
    """Task-agnostic low-rank modules (TA-LoRA) in the shared layers and task-specific ones
    (TS-LoRA) at the branching point: the last `task_layers` transformer blocks.

    Agiza, Neseem and Reda, "MTLoRA: Low-Rank Adaptation Approach for Efficient Multi-Task
    Learning", CVPR 2024. A TS-LoRA layer gives each task its own output W x + s_t B_t A_t x
    (`shared_mode: matrix`) or W x + s B A x + s_t B_t A_t x (`matrixv2`: the task path is
    fused with the shared one). In the paper the branching point is the last block of each
    encoder stage, whose task-specific outputs feed the task decoders; a transformer here has
    one stage, so the branching point is its last `task_layers` blocks, through which each
    example follows its task's path. Scales: the paper's fixed multipliers `shared_scale`,
    `task_scale` (default alpha / r), optionally learned (`trainable_scale_shared`,
    `trainable_scale_per_task`). Blocks are told apart by the first number in a layer's name
    (`encoder.layer.11.attention...`). A TS-LoRA's B_t, A_t (and learned s_t) are private to
    task t.

    Trainable parameters: Σ over TA-LoRA layers of r (d_in + d_out) + [trainable shared
    scale], plus Σ over TS-LoRA layers of T r (d_in + d_out) + T [trainable task scales]
    + (matrixv2 only) r (d_in + d_out) + [trainable shared scale].
    """

    def __init__(self, task_names: Sequence[str], r: int = 8, alpha: float = 16.0,
                 dropout: float = 0.0,
                 target_modules: Sequence[str] | str = ("query", "value"),
                 task_layers: int = 1, shared_mode: SharedMode = "matrixv2",
                 shared_scale: float | None = None, task_scale: float | None = None,
                 trainable_scale_shared: bool = False,
                 trainable_scale_per_task: bool = False) -> None:
        super().__init__(task_names, r, alpha, dropout, target_modules)
        if task_layers < 1:
            raise ConfigError(f"model.adapter.task_layers: needs at least 1 task-specific "
                              f"block, got {task_layers}")
        self.task_layers = task_layers
        self.shared_mode: SharedMode = shared_mode
        self.scales = (self.scaling if shared_scale is None else shared_scale,
                       self.scaling if task_scale is None else task_scale)
        self.trainable = (trainable_scale_shared, trainable_scale_per_task)
        self.branching: set[str] = set()

    def attach(self, backbone: nn.Module) -> None:
        self.branching = branching_layers(matching_linear_names(backbone, self.target_modules),
                                          self.task_layers)
        super().attach(backbone)

    def wrap(self, name: str, index: int, layer: nn.Linear) -> nn.Module:
        del index
        return MTLoRALinear(layer, self.routing, self.dropout, len(self.task_names), self.r,
                            name in self.branching, self.shared_mode, self.scales,
                            self.trainable)

    @classmethod
    def trainable_count(cls, layers: Mapping[str, tuple[int, int]], num_tasks: int,
                        **options: Any) -> int:
        r = options.get("r", 8)
        shared_scale = int(options.get("trainable_scale_shared", False))
        task_scale = int(options.get("trainable_scale_per_task", False))
        v2 = options.get("shared_mode", "matrixv2") == "matrixv2"
        branching = branching_layers(list(layers), options.get("task_layers", 1))
        total = 0
        for name, (d_in, d_out) in layers.items():
            pair = r * (d_in + d_out)
            if name in branching:
                total += num_tasks * (pair + task_scale) + (pair + shared_scale if v2 else 0)
            else:
                total += pair + shared_scale
        return total


def branching_layers(names: Sequence[str], task_layers: int) -> set[str]:
    """The adapted layers in the last `task_layers` numbered blocks."""
    indices = {name: layer_index(name) for name in names}
    unnumbered = [name for name, index in indices.items() if index is None]
    if unnumbered:
        raise ConfigError(
            f"model.adapter: mtlora places its task-specific modules in the last blocks, "
            f"told apart by the block number in a layer's name, but {unnumbered[0]!r} has "
            "none; list target_modules inside the numbered blocks (e.g. [query, value])"
        )
    last = sorted({i for i in indices.values() if i is not None})[-task_layers:]
    return {name for name, index in indices.items() if index in last}
