"""Per-task gradients of the shared parameters, computed with one batched backward.

`task_jacobian` returns the T x P matrix whose row t is the gradient of loss t with
respect to the (flattened, concatenated) shared parameters. It uses one vmap'd backward
(`is_grads_batched=True`) and falls back to T ordinary backward passes only when an
operation in the graph has no batching rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def task_jacobian(losses: Tensor, params: Sequence[Tensor], retain_graph: bool = True) -> Tensor:
    """The T x P Jacobian of the loss vector w.r.t. `params` (missing grads are zeros)."""
    t = losses.numel()
    eye = torch.eye(t, dtype=losses.dtype, device=losses.device)
    try:
        grads = torch.autograd.grad(
            losses,
            list(params),
            grad_outputs=eye,
            is_grads_batched=True,
            retain_graph=True,
            allow_unused=True,
        )
    except RuntimeError:
        rows = [
            torch.autograd.grad(losses[i], list(params), retain_graph=True, allow_unused=True)
            for i in range(t)
        ]
        grads = tuple(
            torch.stack([torch.zeros_like(p) if r[j] is None else r[j] for r in rows])
            for j, p in enumerate(params)
        )
    flat = [
        torch.zeros(t, p.numel(), dtype=losses.dtype, device=losses.device)
        if g is None
        else g.reshape(t, -1)
        for g, p in zip(grads, params, strict=True)
    ]
    del retain_graph
    return torch.cat(flat, dim=1)


def task_gramian(losses: Tensor, params: Sequence[Tensor]) -> Tensor:
    """The T x T Gramian `J Jᵀ` of the per-task gradients."""
    jacobian = task_jacobian(losses, params)
    return jacobian @ jacobian.T
