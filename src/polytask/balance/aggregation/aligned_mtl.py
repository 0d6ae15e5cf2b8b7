"""Aligned-MTL (Senushkin et al. 2023, "Independent Component Alignment for Multi-Task
Learning", CVPR)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from polytask.balance.base import BALANCERS, GramianWeighting
from polytask.balance.solvers import as_weights, normalized, to_numpy


@BALANCERS.register(
    "aligned_mtl", paper="Independent Component Alignment for Multi-Task Learning (2023)"
)
class AlignedMTL(GramianWeighting):
    """Aligned-MTL: replaces the task gradients J by the aligned system B J whose non-zero
    singular values all equal the smallest one of J (condition number 1), then combines the
    aligned gradients with the user's `task_weights` (default 1 each: sum convention, as in
    the authors' code). With G = V Λ Vᵀ, B = σ_min V Λ^(-1/2) Vᵀ on the non-null eigenspace
    (eigenvalues above T·eps·λ_max, eps of the input dtype).
    """

    def __init__(self, task_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.task_weights = None if task_weights is None else list(task_weights)

    def alignment(self, gramian: Tensor) -> np.ndarray:
        """The T x T matrix B such that B J is the aligned system."""
        g, _ = normalized(to_numpy(gramian))
        values, vectors = np.linalg.eigh(g)
        t = len(values)
        keep = values > t * torch.finfo(gramian.dtype).eps * max(values.max(initial=0.0), 0.0)
        if not keep.any():
            return np.zeros((t, t))
        lam, v = values[keep], vectors[:, keep]
        return np.sqrt(lam.min()) * (v / np.sqrt(lam)) @ v.T

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        t = gramian.shape[0]
        user = np.ones(t) if self.task_weights is None else np.asarray(self.task_weights)
        if user.shape != (t,):
            raise ValueError(f"aligned_mtl has {len(user)} task_weights for {t} tasks")
        return as_weights(self.alignment(gramian).T @ user, gramian)
