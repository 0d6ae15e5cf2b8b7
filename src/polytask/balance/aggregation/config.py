"""ConFIG (Liu et al. 2024, "ConFIG: Towards Conflict-free Training of Physics Informed
Neural Networks")."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from polytask.balance.base import BALANCERS, GramianWeighting
from polytask.balance.solvers import (
    RELATIVE_EPS,
    as_weights,
    normalized,
    safe_reciprocal,
    to_numpy,
)


def config_weights(gramian: np.ndarray) -> np.ndarray:
    """Weights w with wᵀJ the ConFIG update, from the Gramian alone."""
    g, _ = normalized(gramian)
    inv = safe_reciprocal(np.sqrt(np.clip(np.diag(g), 0.0, None)), RELATIVE_EPS**0.5)
    cosines = inv[:, None] * g * inv[None, :]
    active = inv > 0
    coeffs = np.zeros(len(g))
    # the min-norm x with û_t·x = 1 for every unit gradient û_t is x = Ûᵀ (Û Ûᵀ)⁺ 1
    y = np.linalg.lstsq(cosines[np.ix_(active, active)], np.ones(active.sum()), rcond=None)[0]
    coeffs[active] = inv[active] * y
    norm2 = coeffs @ g @ coeffs
    if norm2 <= 0:
        return np.zeros(len(g))
    return coeffs * (g.sum(0) @ coeffs) / norm2


@BALANCERS.register(
    "config", paper="ConFIG: Towards Conflict-free Training of PINNs (Liu et al. 2024)"
)
class ConFIG(GramianWeighting):
    """ConFIG: the direction x with equal cosine to every task gradient (the min-norm
    solution of Û x = 1, Û the unit gradients), scaled to length Σ_t g_t·x̂, the sum of the
    gradients' projections on it (sum convention, as in the paper). Positive inner product
    with every gradient when they are linearly independent.
    """

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        return as_weights(config_weights(to_numpy(gramian)), gramian)
