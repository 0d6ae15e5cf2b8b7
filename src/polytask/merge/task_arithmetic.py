"""Task arithmetic: add the scaled sum of the task vectors to the base."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor

from polytask.merge import functional
from polytask.merge.base import MERGERS, TensorwiseMerger


@MERGERS.register("task_arithmetic", paper="Editing Models with Task Arithmetic (Ilharco et "
                  "al. 2023)")
class TaskArithmetic(TensorwiseMerger):
    """``base + λ Σ_i (expert_i − base)``: the task vectors are summed, then scaled by λ
    (`scale`); λ = 0 gives the base, λ = 1/N the weight average.

    Grid: scale ∈ {0.3, 0.5, 0.7, 1.0} (the range Ilharco et al. search on validation)."""

    grid: ClassVar[dict[str, list[Any]]] = {"scale": [0.3, 0.5, 0.7, 1.0]}

    def __init__(self, scale: float = 0.3) -> None:
        super().__init__()
        self.scale = scale

    def merge_tensor(self, name: str, base: Tensor, experts: Sequence[Tensor]) -> Tensor:
        return functional.task_arithmetic(base, experts, self.scale)
