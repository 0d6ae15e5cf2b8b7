"""UPGrad (Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization")."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from polytask.balance.base import BALANCERS, GramianWeighting
from polytask.balance.solvers import as_weights, project_weights_to_dual_cone, to_numpy


@BALANCERS.register(
    "upgrad", paper="Jacobian Descent for Multi-Objective Optimization (Quinton & Rey 2024)"
)
class UPGrad(GramianWeighting):
    """UPGrad: projects every task gradient onto the dual cone of all task gradients (the
    vectors that conflict with none of them) and averages the projections (mean
    convention: equal to the mean gradient when no two gradients conflict). The result
    never conflicts with any task gradient. Each projection is an exact NNLS problem on the
    Gramian.
    """

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        t = gramian.shape[0]
        rows = project_weights_to_dual_cone(to_numpy(gramian), np.eye(t) / t)
        return as_weights(rows.sum(0), gramian)
