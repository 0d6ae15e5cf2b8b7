"""Per-task gradients of the shared parameters, computed with one batched backward.

`task_jacobian` returns the T x P matrix whose row t is the gradient of loss t with
respect to the (flattened, concatenated) shared parameters. It uses one vmap'd backward
(`is_grads_batched=True`) and falls back to T ordinary backward passes only when an
operation in the graph has no batching rule. (`polytask.balance.gramian` gets the T x T
Gramian without forming this matrix.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge


def batched_grads(
    losses: Tensor, inputs: Sequence[Tensor | GradientEdge]
) -> tuple[Tensor | None, ...]:
    """For each input, the T stacked gradients d losses[t] / d input (None when unused)."""
    if not inputs:
        return ()
    t = losses.numel()
    eye = torch.eye(t, dtype=losses.dtype, device=losses.device)
    try:
        return torch.autograd.grad(
            losses,
            list(inputs),
            grad_outputs=eye,
            is_grads_batched=True,
            retain_graph=True,
            allow_unused=True,
        )
    except RuntimeError:
        rows = [
            torch.autograd.grad(losses[i], list(inputs), retain_graph=True, allow_unused=True)
            for i in range(t)
        ]
    out: list[Tensor | None] = []
    for j in range(len(inputs)):
        column = [r[j] for r in rows]
        like = next((c for c in column if c is not None), None)
        out.append(
            None
            if like is None
            else torch.stack([torch.zeros_like(like) if c is None else c for c in column])
        )
    return tuple(out)


def task_jacobian(losses: Tensor, params: Sequence[Tensor]) -> Tensor:
    """The T x P Jacobian of the loss vector w.r.t. `params` (missing grads are zeros)."""
    t = losses.numel()
    grads = batched_grads(losses, params)
    return torch.cat(
        [
            torch.zeros(t, p.numel(), dtype=losses.dtype, device=losses.device)
            if g is None
            else g.reshape(t, -1)
            for g, p in zip(grads, params, strict=True)
        ],
        dim=1,
    )


def feature_jacobian(losses: Sequence[Tensor], features: Tensor) -> Tensor:
    """The T x (numel of features) Jacobian of the losses w.r.t. the shared representation.

    One plain backward per task: past the shared representation each loss reaches only its
    own head, so T small backward passes cost far less than one batched backward of the
    stacked losses (which would push T rows, all but one zero, through every head).
    """
    rows = []
    for loss in losses:
        (grad,) = torch.autograd.grad(loss, features, retain_graph=True, allow_unused=True)
        rows.append(torch.zeros_like(features).flatten() if grad is None else grad.flatten())
    return torch.stack(rows)
