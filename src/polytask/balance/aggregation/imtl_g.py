"""IMTL-G, the gradient half of Impartial Multi-Task Learning (Liu et al. 2021, "Towards
Impartial Multi-task Learning", ICLR)."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from polytask.balance.base import BALANCERS, GramianWeighting
from polytask.balance.solvers import RELATIVE_EPS, as_weights, normalized, to_numpy


@BALANCERS.register("imtl_g", paper="Towards Impartial Multi-task Learning (Liu et al. 2021)")
class IMTLG(GramianWeighting):
    """IMTL-G: the update g = Σ_t α_t g_t with Σ α_t = 1 has the same projection on every
    unit task gradient u_t (g·u_t = c for all t), so no task is favoured by its scale.

    The paper solves for α relative to task 1; here the same conditions, N G α = c 1 and
    1ᵀα = 1 (N = diag(1/|g_t|)), are solved as one symmetric linear system (min-norm least
    squares), so the result does not depend on the task order even when the gradients are
    linearly dependent. Tasks with a zero gradient get weight 0. Weights sum to 1.
    """

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        g, _ = normalized(to_numpy(gramian))
        t = g.shape[0]
        norms = np.sqrt(np.clip(np.diag(g), 0.0, None))
        active = norms**2 > RELATIVE_EPS
        alpha = np.zeros(t)
        if active.any():
            sub, sub_norms = g[np.ix_(active, active)], norms[active]
            pair = impartial_pair(sub, sub_norms) if len(sub) == 2 else None
            alpha[active] = impartial_lstsq(sub, sub_norms) if pair is None else pair
        return as_weights(alpha, gramian)


def impartial_lstsq(g: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """α with N G α = c 1 and 1ᵀα = 1 (N = diag(1/norms)): min-norm least squares."""
    k = len(g)
    system = np.zeros((k + 1, k + 1))
    system[:k, :k] = g / norms[:, None]
    system[:k, k] = -1.0
    system[k, :k] = 1.0
    rhs = np.zeros(k + 1)
    rhs[k] = 1.0
    return np.linalg.lstsq(system, rhs, rcond=None)[0][:k]


def impartial_pair(g: np.ndarray, norms: np.ndarray) -> np.ndarray | None:
    """Two tasks: g·u_0 = g·u_1 reads α_0 a = α_1 b with a = |g_0| - G_01/|g_1| and
    b = |g_1| - G_01/|g_0| (both >= 0), so α = (b, a) / (a + b), the unique solution of the
    system `impartial_lstsq` solves. None when a + b (= (|g_0| + |g_1|)(1 - cos)) is too
    small for that: nearly parallel gradients, left to least squares."""
    first = norms[0] - g[0, 1] / norms[1]
    second = norms[1] - g[0, 1] / norms[0]
    total = first + second
    if total <= 1e-8 * (norms[0] + norms[1]):
        return None
    return np.array([second / total, first / total])
