"""Numerical helpers shared by the balancers: small problems over the T x T Gramian.

Every solver here works in float64 on a Gramian first divided by its largest diagonal entry
(`normalized`), so that gradients of scale 1e-8 or 1e8 give the same weights as gradients of
scale 1. The exact solvers reduce to non-negative least squares (Lawson & Hanson's active-set
NNLS, `scipy.optimize.nnls`), which terminates in finitely many steps with an exact answer.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import minimize, nnls
from torch import Tensor

#: Relative size below which a Gramian eigenvalue or squared norm counts as zero.
RELATIVE_EPS = 1e-12


def to_numpy(gramian: Tensor) -> np.ndarray:
    """The Gramian as a symmetric float64 array."""
    g = gramian.detach().to("cpu", torch.float64).numpy()
    return (g + g.T) / 2


def normalized(gramian: np.ndarray) -> tuple[np.ndarray, float]:
    """`(G / s, s)` with `s` the largest diagonal entry (1 for an all-zero Gramian)."""
    scale = float(np.max(np.diag(gramian), initial=0.0))
    if not np.isfinite(scale):
        raise ValueError("the Gramian of the task gradients is not finite (NaN or inf loss?)")
    if scale <= 0.0:
        return np.zeros_like(gramian), 1.0
    return gramian / scale, scale


def as_weights(weights: np.ndarray, like: Tensor) -> Tensor:
    """Back to a tensor with the Gramian's dtype and device."""
    return torch.as_tensor(weights, dtype=like.dtype, device=like.device)


def factor(gramian: np.ndarray) -> np.ndarray:
    """A square matrix `R` with `Rᵀ R = G` (through the eigendecomposition; G may be singular)."""
    values, vectors = np.linalg.eigh(gramian)
    values = np.clip(values, 0.0, None)
    return np.sqrt(values)[:, None] * vectors.T


def safe_reciprocal(x: np.ndarray, floor: float) -> np.ndarray:
    """`1 / x` where `x > floor`, else 0 (zero gradients get zero weight, never inf)."""
    out = np.zeros_like(x)
    keep = x > floor
    out[keep] = 1.0 / x[keep]
    return out


def min_norm_in_hull(gramian: np.ndarray) -> np.ndarray:
    """Exact weights `w` of the minimum-norm point of the convex hull of the gradients.

    Solves min_w wᵀ G w over the simplex (Sener & Koltun 2018) without iterating: the dual
    of "min |d| s.t. g_t·d >= 1" is a least-distance problem, which Lawson & Hanson (1974,
    ch. 23) reduce to NNLS: u = argmin_{u>=0} |E u - e| with E = [R; 1ᵀ], e = (0,...,0,1).
    Then w = u / sum(u), both when the hull excludes the origin and when it contains it.
    """
    t = gramian.shape[0]
    g, _ = normalized(gramian)
    if not g.any():
        return np.full(t, 1.0 / t)
    system = np.vstack([factor(g), np.ones((1, t))])
    target = np.zeros(t + 1)
    target[-1] = 1.0
    u, _ = nnls(system, target, maxiter=50 * t)
    return u / u.sum()


def project_weights_to_dual_cone(gramian: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """For each row `u` of `lower`, `v = argmin_{v >= u} vᵀ G v`.

    `vᵀ J` is then the projection of `uᵀ J` onto the dual cone of the task gradients (the
    vectors with a non-negative inner product with every gradient; Quinton & Rey 2024):
    the KKT conditions give G v >= 0. With v = u + z, z >= 0 this is the NNLS problem
    min_{z>=0} |R z + R u|.
    """
    g, _ = normalized(gramian)
    r = factor(g)
    rows = []
    for u in np.atleast_2d(lower):
        z, _ = nnls(r, -r @ u, maxiter=50 * len(u))
        rows.append(u + z)
    return np.stack(rows)


def nash_bargaining(gramian: np.ndarray, max_iter: int = 100) -> np.ndarray:
    """The positive solution of `G α = 1/α` (Navon et al. 2022), on G normalised by its
    Frobenius norm as the authors' code does.

    It is the unique minimiser of the strictly convex ½ αᵀGα - Σ log α, found here by damped
    Newton steps to machine precision (the paper approximates it with a sequence of convex
    programs). Tasks with a zero gradient have no solution (α_t -> ∞); they get weight 0
    and are left out of the system.
    """
    t = gramian.shape[0]
    diag = np.diag(gramian)
    active = diag > RELATIVE_EPS * max(float(diag.max(initial=0.0)), 0.0)
    alpha = np.zeros(t)
    if not active.any():
        return alpha
    g = gramian[np.ix_(active, active)]
    g = g / np.linalg.norm(g)
    g = g + RELATIVE_EPS * np.eye(len(g))

    def objective(a: np.ndarray) -> float:
        return float(0.5 * a @ g @ a - np.log(a).sum())

    a = np.full(len(g), np.sqrt(len(g) / g.sum()) if g.sum() > 0 else 1.0)
    for _ in range(max_iter):
        grad = g @ a - 1.0 / a
        hess = g + np.diag(1.0 / a**2)
        step = -np.linalg.solve(hess, grad)
        decrement = float(-grad @ step)
        if decrement < 1e-20:
            break
        size = 1.0
        while np.any(a + size * step <= 0):
            size *= 0.5
        f0 = objective(a)
        while objective(a + size * step) > f0 - 0.25 * size * decrement and size > 1e-12:
            size *= 0.5
        a = a + size * step
    alpha[active] = a
    return alpha


def minimize_on_simplex(
    objective: Callable[[np.ndarray], float],
    gradient: Callable[[np.ndarray], np.ndarray],
    size: int,
) -> np.ndarray:
    """Minimise a smooth convex function of `w` over the probability simplex (SLSQP)."""
    start = np.full(size, 1.0 / size)
    result = minimize(
        objective,
        start,
        jac=gradient,
        bounds=[(0.0, 1.0)] * size,
        constraints=({"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": np.ones_like},),
        method="SLSQP",
        options={"ftol": 1e-12, "maxiter": 200},
    )
    w = np.clip(result.x, 0.0, None)
    return w / w.sum() if w.sum() > 0 else start
