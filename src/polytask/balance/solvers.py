"""Numerical helpers shared by the balancers: small problems over the T x T Gramian.

Every solver here works in float64 on a Gramian first divided by its largest diagonal entry
(`normalized`), so that gradients of scale 1e-8 or 1e8 give the same weights as gradients of
scale 1. The exact solvers reduce to non-negative least squares (Lawson & Hanson's active-set
NNLS, `scipy.optimize.nnls`), which terminates in finitely many steps with an exact answer.

With two tasks the same answers have closed forms (`*_pair` below), which skip the solver's
set-up (a tenth of a millisecond, a noticeable share of a small model's step). Each one is
the point the general solver converges to, and hands back to it (returns None) where the
2 x 2 Gramian is degenerate (not positive semi-definite in floating point, or the answer
not unique).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import brentq, minimize, nnls
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


def is_psd_pair(g: np.ndarray) -> bool:
    """Whether a 2 x 2 Gramian is positive semi-definite as stored (non-negative diagonal and
    determinant): the closed forms rely on it (Cauchy-Schwarz)."""
    return g[0, 0] >= 0.0 and g[1, 1] >= 0.0 and g[0, 0] * g[1, 1] >= g[0, 1] ** 2


def min_norm_pair(g: np.ndarray) -> np.ndarray | None:
    """Two tasks: the minimum-norm point of the segment [g_0, g_1] is at
    w_0 = clip((G_11 - G_01) / |g_0 - g_1|², 0, 1) (Sener & Koltun 2018, Algorithm 1).
    None when g_0 = g_1 (every w is optimal) or G is not PSD as stored."""
    spread = g[0, 0] + g[1, 1] - 2.0 * g[0, 1]
    if not is_psd_pair(g) or spread <= RELATIVE_EPS * max(g[0, 0], g[1, 1]):
        return None
    first = min(1.0, max(0.0, (g[1, 1] - g[0, 1]) / spread))
    return np.array([first, 1.0 - first])


def min_norm_in_hull(gramian: np.ndarray) -> np.ndarray:
    """Exact weights `w` of the minimum-norm point of the convex hull of the gradients
    (`min_norm_pair` for two tasks, else `nnls_min_norm_in_hull`)."""
    if gramian.shape[0] == 2:
        g, _ = normalized(gramian)
        pair = min_norm_pair(g) if g.any() else None
        if pair is not None:
            return pair
    return nnls_min_norm_in_hull(gramian)


def nnls_min_norm_in_hull(gramian: np.ndarray) -> np.ndarray:
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


def project_pair(g: np.ndarray, u: np.ndarray) -> np.ndarray | None:
    """Two tasks, `u >= 0`: `argmin_{v >= u} vᵀ G v` in closed form. As uᵀGu >= 0, at most
    one entry of Gu is negative; raising that v_j until (Gv)_j = 0 gives
    v_j = -G_jk u_k / G_jj, and then (Gv)_k = u_k (G_kk - G_jk² / G_jj) >= 0, so the KKT
    conditions hold: the point NNLS reaches in one step. None when G is not PSD as stored."""
    if not is_psd_pair(g) or (u < 0).any():
        return None
    v = u.astype(np.float64, copy=True)
    for j, k in ((0, 1), (1, 0)):
        if g[j, j] * u[j] + g[j, k] * u[k] < 0.0:  # (Gu)_j < 0, so G_jj > 0
            v[j] = -g[j, k] * u[k] / g[j, j]
            break
    return v


def project_weights_to_dual_cone(gramian: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """For each row `u` of `lower`, `v = argmin_{v >= u} vᵀ G v` (`project_pair` for two
    tasks, else `nnls_project_weights_to_dual_cone`)."""
    rows = np.atleast_2d(lower)
    if gramian.shape[0] == 2:
        g, _ = normalized(gramian)
        pairs = [project_pair(g, u) for u in rows]
        if all(v is not None for v in pairs):
            return np.stack(pairs)  # type: ignore[arg-type]
    return nnls_project_weights_to_dual_cone(gramian, rows)


def nnls_project_weights_to_dual_cone(gramian: np.ndarray, lower: np.ndarray) -> np.ndarray:
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
    pair = nash_pair(g) if len(g) == 2 else None
    alpha[active] = newton_nash(g, max_iter) if pair is None else pair
    return alpha


def nash_pair(g: np.ndarray) -> np.ndarray | None:
    """Two tasks: G α = 1/α gives G_00 α_0² = G_11 α_1² (subtract the two rows), so
    α_1 = ρ α_0 with ρ = sqrt(G_00 / G_11) and α_0 = 1 / sqrt(G_00 + ρ G_01). None when
    G_00 + ρ G_01 is not clearly positive (nearly opposite gradients: left to Newton)."""
    if not (g[0, 0] > 0.0 and g[1, 1] > 0.0):
        return None
    ratio = float(np.sqrt(g[0, 0] / g[1, 1]))
    reach = g[0, 0] + ratio * g[0, 1]
    if reach <= 1e-6 * g[0, 0]:
        return None
    first = 1.0 / float(np.sqrt(reach))
    return np.array([first, ratio * first])


def newton_nash(g: np.ndarray, max_iter: int = 100) -> np.ndarray:
    """The positive solution of `G α = 1/α` for a positive definite G, by damped Newton
    steps on ½ αᵀGα - Σ log α."""

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
    return a


def minimize_on_simplex(
    objective: Callable[[np.ndarray], float],
    gradient: Callable[[np.ndarray], np.ndarray],
    size: int,
) -> np.ndarray:
    """Minimise a smooth convex function of `w` over the probability simplex
    (`minimize_on_pair` for two tasks, else `slsqp_on_simplex`)."""
    if size == 2:
        return minimize_on_pair(gradient)
    return slsqp_on_simplex(objective, gradient, size)


def minimize_on_pair(gradient: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Two tasks: the minimiser of a smooth convex function over w = (s, 1 - s), 0 <= s <= 1.
    Its derivative along the segment, gradient·(1, -1), does not decrease with s, so the
    minimiser is an end of the segment or the root of that derivative (Brent's method, to
    machine precision): the point SLSQP approaches, without its set-up (milliseconds)."""

    def slope(s: float) -> float:
        d = gradient(np.array([s, 1.0 - s]))
        return float(d[0] - d[1])

    low, high = slope(0.0), slope(1.0)
    if low >= 0.0 and high <= 0.0:
        first = 0.5  # flat: every point is a minimiser; the centre, where SLSQP starts
    elif low >= 0.0:
        first = 0.0
    elif high <= 0.0:
        first = 1.0
    else:
        first = float(brentq(slope, 0.0, 1.0, xtol=1e-15, rtol=4 * np.finfo(float).eps))
    return np.array([first, 1.0 - first])


def slsqp_on_simplex(
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
