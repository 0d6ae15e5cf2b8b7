"""CAGrad (Liu et al. 2021, "Conflict-Averse Gradient Descent for Multi-task Learning")."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from polytask.balance.base import BALANCERS, GramianWeighting
from polytask.balance.solvers import as_weights, minimize_on_simplex, normalized, to_numpy


@BALANCERS.register(
    "cagrad", paper="Conflict-Averse Gradient Descent for Multi-task Learning (Liu 2021)"
)
class CAGrad(GramianWeighting):
    """CAGrad: maximises the worst task improvement within a ball of radius c|g0| around the
    mean gradient g0. The dual is min_{w in simplex} g_wᵀg0 + c|g0| |g_w| (g_w = wᵀJ,
    solved by SLSQP as in the authors' code) and the update is g0 + c|g0| g_w / |g_w|,
    divided by 1 + c² when `rescale` (the authors' default). Mean convention (c = 0 gives
    the mean gradient).
    """

    def __init__(self, c: float = 0.4, rescale: bool = True) -> None:
        super().__init__()
        if c < 0:
            raise ValueError(f"cagrad needs c >= 0, got {c}")
        self.c = c
        self.rescale = rescale

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        g, _ = normalized(to_numpy(gramian))
        t = g.shape[0]
        mean = np.full(t, 1.0 / t)
        radius = self.c * np.sqrt(max(float(mean @ g @ mean), 0.0))
        alpha = mean.copy()
        if radius > 0:
            b = g @ mean

            def objective(w: np.ndarray) -> float:
                return float(w @ b + radius * np.sqrt(w @ g @ w + 1e-12))

            def gradient(w: np.ndarray) -> np.ndarray:
                return b + radius * (g @ w) / np.sqrt(w @ g @ w + 1e-12)

            w = minimize_on_simplex(objective, gradient, t)
            norm = np.sqrt(max(float(w @ g @ w), 0.0))
            if norm > 0:
                alpha = alpha + radius / norm * w
        if self.rescale:
            alpha = alpha / (1.0 + self.c**2)
        return as_weights(alpha, gramian)
