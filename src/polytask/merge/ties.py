"""TIES-merging: trim, elect sign, disjoint merge."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor

from polytask.merge import functional
from polytask.merge.base import MERGERS, TensorwiseMerger, check_density
from polytask.merge.functional import ZeroSign


@MERGERS.register("ties", paper="TIES-Merging: Resolving Interference When Merging Models "
                  "(Yadav et al. 2023)")
class Ties(TensorwiseMerger):
    """Keep each task vector's top ``⌊density · n⌋`` magnitudes per tensor, elect each entry's
    sign by total mass, average the agreeing values (disjoint mean) and add λ (`scale`) times
    that to the base.

    Conventions (see `polytask.merge.functional`): an entry whose total mass is exactly zero
    elects + (``zero_sign="positive"``, as PEFT) or the tensor's majority sign
    (``"majority"``, as the authors' code). Grid: density ∈ {0.2, 0.5} × scale ∈ {0.5, 1.0}
    (the paper keeps the top 20% and searches λ)."""

    grid: ClassVar[dict[str, list[Any]]] = {"density": [0.2, 0.5], "scale": [0.5, 1.0]}

    def __init__(self, density: float = 0.2, scale: float = 1.0,
                 zero_sign: ZeroSign = "positive") -> None:
        super().__init__()
        self.density = check_density(density, "ties")
        self.scale = scale
        self.zero_sign = zero_sign

    def merge_tensor(self, name: str, base: Tensor, experts: Sequence[Tensor]) -> Tensor:
        return functional.ties(base, experts, self.density, self.scale,
                               zero_sign=self.zero_sign)
