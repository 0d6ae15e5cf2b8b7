"""MGDA (Désidéri 2012; Sener & Koltun 2018, "Multi-Task Learning as Multi-Objective
Optimization")."""

from __future__ import annotations

from torch import Tensor

from polytask.balance.base import BALANCERS, GramianWeighting
from polytask.balance.solvers import as_weights, min_norm_in_hull, to_numpy


@BALANCERS.register(
    "mgda", paper="Multi-Task Learning as Multi-Objective Optimization (Sener & Koltun 2018)"
)
class MGDA(GramianWeighting):
    """MGDA: the update is the minimum-norm point of the convex hull of the task gradients,
    a common descent direction for every task (or zero at a Pareto-stationary point).

    The weights are the exact solution of the QP min_w wᵀGw over the simplex (sum to 1,
    mean-like convention), solved in finitely many steps by NNLS, not approximated by
    Frank-Wolfe. With `representation=True` (see `polytask.balance.get`) this is MGDA-UB.
    """

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        return as_weights(min_norm_in_hull(to_numpy(gramian)), gramian)
