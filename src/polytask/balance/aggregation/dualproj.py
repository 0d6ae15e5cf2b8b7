"""DualProj (Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization")."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from polytask.balance.base import BALANCERS, GramianWeighting
from polytask.balance.solvers import as_weights, project_weights_to_dual_cone, to_numpy


@BALANCERS.register(
    "dualproj", paper="Jacobian Descent for Multi-Objective Optimization (Quinton & Rey 2024)"
)
class DualProj(GramianWeighting):
    """DualProj: the mean gradient projected onto the dual cone of the task gradients, i.e.
    the closest vector to it that conflicts with no task gradient (mean convention)."""

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        t = gramian.shape[0]
        row = project_weights_to_dual_cone(to_numpy(gramian), np.full((1, t), 1.0 / t))
        return as_weights(row[0], gramian)
