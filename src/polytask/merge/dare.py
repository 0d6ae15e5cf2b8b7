"""DARE: drop task-vector entries at random, rescale the rest, then combine."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from polytask.errors import ConfigError
from polytask.merge import functional
from polytask.merge.base import MERGERS, TensorwiseMerger, check_density
from polytask.merge.functional import Combine


@MERGERS.register("dare", paper="Language Models are Super Mario: Absorbing Abilities from "
                  "Homologous Models as a Free Lunch (Yu et al. 2024)")
class Dare(TensorwiseMerger):
    """Keep each task-vector entry with probability `density` (drop with p = 1 − density),
    rescale the kept ones by 1/density, then combine with a λ-scaled sum
    (``combine="linear"``) or TIES's sign election and disjoint mean (``combine="ties"``).

    Seeded: each tensor's masks come from a generator seeded with `seed` and the tensor's
    name, so a merge is reproducible and does not depend on the order tensors are read in
    (streaming and in-memory merges agree). Grid: density ∈ {0.1, 0.3} × scale ∈ {0.5, 1.0}
    (the paper drops 90%)."""

    grid: ClassVar[dict[str, list[Any]]] = {"density": [0.1, 0.3], "scale": [0.5, 1.0]}

    def __init__(self, density: float = 0.1, scale: float = 0.5, combine: Combine = "linear",
                 seed: int = 0) -> None:
        super().__init__()
        self.density = check_density(density, "dare")
        if combine not in ("linear", "ties"):
            raise ConfigError(f"dare: combine={combine!r} is not a combination; use 'linear' "
                              "or 'ties'.")
        self.scale = scale
        self.combine: Combine = combine
        self.seed = seed

    def merge_tensor(self, name: str, base: Tensor, experts: Sequence[Tensor]) -> Tensor:
        generator = torch.Generator(device=base.device)
        generator.manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
        return functional.dare(base, experts, self.density, self.scale, generator, self.combine)
