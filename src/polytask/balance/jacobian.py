"""Per-task gradients of the shared parameters, computed with one batched backward.

`task_jacobian` returns the T x P matrix whose row t is the gradient of loss t with
respect to the (flattened, concatenated) shared parameters. It uses one vmap'd backward
(`is_grads_batched=True`) and falls back to T ordinary backward passes only when an
operation in the graph has no batching rule. (`polytask.balance.gramian` gets the T x T
Gramian without forming this matrix.)

When the shared representation `features` is known and every path from the losses to the
shared parameters passes through it (`cut_at_features`), the batched backward starts there:
the T per-task gradients w.r.t. `features` come from T small backward passes (each through
its own head only), so the heads are not traversed T times with T-row gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge, Node

Losses = Tensor | Sequence[Tensor]


def as_vector(losses: Losses) -> Tensor:
    """The loss vector (the tensor itself, or the stacked scalar losses)."""
    if isinstance(losses, Tensor):
        return losses.reshape(-1)
    return torch.stack([loss.reshape(()) for loss in losses])


def batched_grads(
    outputs: Tensor | GradientEdge,
    inputs: Sequence[Tensor | GradientEdge],
    grad_outputs: Tensor | None = None,
) -> tuple[Tensor | None, ...]:
    """For each input, the T stacked vector-Jacobian products (None when unused).

    Row t back-propagates `grad_outputs[t]` from `outputs`; by default `grad_outputs` is the
    identity and `outputs` the loss vector, which gives the per-task gradients.
    """
    if not inputs:
        return ()
    if grad_outputs is None:
        assert isinstance(outputs, Tensor), "a node's output needs its grad_outputs"
        t = outputs.numel()
        grad_outputs = torch.eye(t, dtype=outputs.dtype, device=outputs.device)
    try:
        return torch.autograd.grad(
            outputs,
            list(inputs),
            grad_outputs=grad_outputs,
            is_grads_batched=True,
            retain_graph=True,
            allow_unused=True,
        )
    except RuntimeError:
        rows = [
            torch.autograd.grad(
                outputs, list(inputs), grad_outputs=row, retain_graph=True, allow_unused=True
            )
            for row in grad_outputs
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


def cut_at_features(
    losses: Losses, features: Tensor | None, params: Sequence[Tensor]
) -> Tensor | None:
    """The T per-task gradients w.r.t. `features` (stacked), when every path from the losses
    to `params` goes through `features`; else None (the caller then starts from the losses).

    Only for a sequence of per-task loss tensors: a stacked vector ties every head together.
    """
    if isinstance(losses, Tensor) or not isinstance(features, Tensor):
        return None
    root = features.grad_fn
    if root is None or not losses or any(p.grad_fn is not None for p in params):
        return None  # (non-leaf "parameters" could not be found in the graph below)
    owned = {id(p) for p in params}
    seen: set[Node] = {root}
    stack = [loss.grad_fn for loss in losses if loss.grad_fn is not None]
    seen.update(stack)
    while stack:
        node = stack.pop()
        if id(getattr(node, "variable", None)) in owned:
            return None  # a shared parameter reached without passing through `features`
        for child, nr in node.next_functions:
            if child is root and nr != features.output_nr:
                return None  # another output of the node that made `features`
            if child is not None and child not in seen:
                seen.add(child)
                stack.append(child)
    return cut_rows(losses, features)


def cut_rows(losses: Sequence[Tensor], cut: Tensor | GradientEdge) -> Tensor | None:
    """The T per-task gradients w.r.t. `cut` (a tensor or a node's output), stacked: one
    plain backward per task, each through its own head only. None when no loss reaches it."""
    grads = [
        torch.autograd.grad(loss, cut, retain_graph=True, allow_unused=True)[0]
        for loss in losses
    ]
    like = next((g for g in grads if g is not None), None)
    if like is None:
        return None
    return torch.stack([torch.zeros_like(like) if g is None else g for g in grads])


def per_task_grads(
    losses: Losses, inputs: Sequence[Tensor], features: Tensor | None = None
) -> tuple[Tensor | None, ...]:
    """For each input, the T stacked per-task gradients (None when unused), cut at
    `features` where that is valid."""
    cut = cut_at_features(losses, features, inputs)
    if cut is not None:
        assert features is not None
        return batched_grads(features, inputs, cut)
    return batched_grads(as_vector(losses), inputs)


def flatten_grads(
    grads: Sequence[Tensor | None], params: Sequence[Tensor], tasks: int, like: Tensor
) -> Tensor:
    """The T x P matrix of stacked per-task gradients (zeros for None)."""
    return torch.cat(
        [
            torch.zeros(tasks, p.numel(), dtype=like.dtype, device=like.device)
            if g is None
            else g.reshape(tasks, -1)
            for g, p in zip(grads, params, strict=True)
        ]
        or [torch.zeros(tasks, 0, dtype=like.dtype, device=like.device)],
        dim=1,
    )


def task_jacobian(
    losses: Losses, params: Sequence[Tensor], features: Tensor | None = None
) -> Tensor:
    """The T x P Jacobian of the losses w.r.t. `params` (missing grads are zeros).

    `losses` is the loss vector or the sequence of per-task losses (the latter allows the
    cut at `features`, see `cut_at_features`).
    """
    vector = as_vector(losses) if isinstance(losses, Tensor) else None
    tasks = vector.numel() if vector is not None else len(losses)
    like = vector if vector is not None else losses[0]
    return flatten_grads(per_task_grads(losses, params, features), params, tasks, like)


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
