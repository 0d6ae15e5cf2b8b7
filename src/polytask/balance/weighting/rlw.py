"""Random loss weighting (Lin et al. 2022, "Reasonable Effectiveness of Random Weighting: A
Litmus Test for Multi-Task Learning")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from polytask.balance.base import BALANCERS, LossWeighting, make_generator


@BALANCERS.register(
    "rlw", paper="Reasonable Effectiveness of Random Weighting (Lin et al. 2022)"
)
class RandomLossWeighting(LossWeighting):
    """RLW: fresh weights w = softmax(z), z ~ N(0, I), at every step (weights sum to 1, so
    equal weighting in expectation is the mean convention). Draws from `generator`."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.generator = make_generator(generator)

    def loss_weights(self, losses: Tensor, names: Sequence[str]) -> Tensor:
        z = torch.randn(len(names), generator=self.generator, dtype=torch.float64)
        return torch.softmax(z, dim=0).to(dtype=losses.dtype, device=losses.device)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])
