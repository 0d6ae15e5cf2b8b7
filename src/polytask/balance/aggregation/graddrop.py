"""GradDrop (Chen et al. 2020, "Just Pick a Sign: Optimizing Deep Multitask Models with
Gradient Sign Dropout", NeurIPS)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from polytask.balance.base import BALANCERS, GradientAggregator, make_generator


@BALANCERS.register("graddrop", paper="Just Pick a Sign: Gradient Sign Dropout (Chen 2020)")
class GradDrop(GradientAggregator):
    """GradDrop: per coordinate, the positive-sign purity P = ½(1 + Σ_t g_t / Σ_t |g_t|)
    decides, against one uniform draw U, which sign survives: positive task gradients are
    kept where P > U, negative ones where P < U. The update is the sum of the surviving
    entries (sum convention). Not Gramian-expressible (it acts per coordinate). The paper
    applies it to activation gradients: use `representation=True` for that.
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.generator = make_generator(generator)

    def aggregate(self, jacobian: Tensor) -> Tensor:
        # Σ_t of the kept entries is `positive` where P > U and `-negative` where P < U, with
        # positive/negative the sums of the positive parts and of the negative parts: two
        # passes over the T x P matrix instead of one per operation.
        total = jacobian.sum(0)
        positive = jacobian.clamp_min(0).sum(0)
        negative = positive - total  # Σ_t max(-g_t, 0)
        magnitude = positive + negative
        ratio = torch.where(magnitude > 0, total / magnitude.clamp_min(1e-300), 0.0)
        purity = 0.5 * (1 + ratio)
        draw = torch.rand(jacobian.shape[1], generator=self.generator, dtype=torch.float64)
        draw = draw.to(dtype=jacobian.dtype, device=jacobian.device)
        return torch.where(purity > draw, positive, 0.0) - torch.where(purity < draw, negative, 0.0)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])
