"""GradDrop (Chen et al. 2020, "Just Pick a Sign: Optimizing Deep Multitask Models with
Gradient Sign Dropout", NeurIPS)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from polytask.balance.base import BALANCERS, JacobianAggregator, make_generator


@BALANCERS.register("graddrop", paper="Just Pick a Sign: Gradient Sign Dropout (Chen 2020)")
class GradDrop(JacobianAggregator):
    """GradDrop: per coordinate, the positive-sign purity P = ½(1 + Σ_t g_t / Σ_t |g_t|)
    decides, against one uniform draw U, which sign survives: positive task gradients are
    kept where P > U, negative ones where P < U. The update is the sum of the surviving
    entries (sum convention). Not Gramian-expressible (it acts per coordinate). The paper
    applies it to activation gradients: use `representation=True` for that.

    Each step draws one float64 uniform per shared coordinate, in the order of the
    flattened, concatenated parameters (one `torch.rand(P)` call on `generator`). Its
    `column_aggregator` lets the engine work a block of coordinates at a time from the
    factored per-task gradients (`TaskGradients.blocks`: a few rows of a linear layer's
    weight at once) without forming the T x P matrix; per coordinate it does the same
    arithmetic on the same draw as `aggregate` on the full matrix, so its update is bit for
    bit that of `aggregate(TaskGradients.jacobian())` for the same generator state. (That matrix is
    assembled from the same row blocks; a whole-layer matrix product can differ from the
    row-block ones in the last bits for some shapes, as the BLAS picks kernels by shape.)
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.generator = make_generator(generator)

    def aggregate(self, jacobian: Tensor) -> Tensor:
        draw = torch.rand(jacobian.shape[1], generator=self.generator, dtype=torch.float64)
        return _drop(jacobian, draw)

    def column_aggregator(self, columns: int) -> Callable[[Tensor, int], Tensor]:
        draw = torch.rand(columns, generator=self.generator, dtype=torch.float64)

        def drop(block: Tensor, first: int) -> Tensor:
            return _drop(block, draw[first : first + block.shape[1]], overwrite=True)

        return drop

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])


#: integer dtype of each float dtype's width, to select entries by bit masks
_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _keep(values: Tensor, mask: Tensor) -> Tensor:
    """`torch.where(mask, values, 0.0)` (bit for bit, NaN and infinities included) as an
    and with an all-ones-or-zero bit mask: `where` branches per entry, which on the CPU costs
    several times as much with a random mask."""
    bits = _BITS[values.element_size()]
    return (values.view(bits) & mask.to(bits).neg_()).view(values.dtype)


def _drop(jacobian: Tensor, draw: Tensor, overwrite: bool = False) -> Tensor:
    """The GradDrop update of the columns of `jacobian` (T x n) given their uniforms (n);
    with `overwrite`, `jacobian` is used as scratch space."""
    # Σ_t of the kept entries is `positive` where P > U and `-negative` where P < U, with
    # positive/negative the sums of the positive parts and of the negative parts: two
    # passes over the T x n matrix instead of one per operation.
    total = jacobian.sum(0)
    positive = (jacobian.clamp_min_(0) if overwrite else jacobian.clamp_min(0)).sum(0)
    negative = positive - total  # Σ_t max(-g_t, 0)
    magnitude = positive + negative
    # where(magnitude > 0, total / magnitude, 0)
    ratio = _keep(total / magnitude.clamp_min(1e-300), magnitude > 0)
    purity = 0.5 * (1 + ratio)
    draw = draw.to(dtype=jacobian.dtype, device=jacobian.device)
    return _keep(positive, purity > draw) - _keep(negative, purity < draw)
