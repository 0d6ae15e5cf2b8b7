"""Nash-MTL (Navon et al. 2022, "Multi-Task Learning as a Bargaining Game")."""

from __future__ import annotations

from torch import Tensor

from polytask.balance.base import BALANCERS, GramianWeighting
from polytask.balance.solvers import as_weights, nash_bargaining, to_numpy


@BALANCERS.register("nash_mtl", paper="Multi-Task Learning as a Bargaining Game (Navon 2022)")
class NashMTL(GramianWeighting):
    """Nash-MTL: the update Σ_t α_t g_t whose weights solve the Nash bargaining condition
    G α = 1/α (each task's gain g_t·d equals 1/α_t), with G normalised by its Frobenius norm
    as in the authors' code, so the update scales with the gradients. Solved exactly (damped
    Newton on a strictly convex function) instead of the paper's sequence of convex
    programs, so no optional solver (cvxpy) is needed. Use `update_every=k` to recompute the
    weights every k steps only (§6.4 of the paper).
    """

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        return as_weights(nash_bargaining(to_numpy(gramian)), gramian)
