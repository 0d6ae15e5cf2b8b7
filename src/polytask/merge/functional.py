"""Pure tensor primitives of model merging, usable without the trainer.

Conventions shared by every function here:

- `base` is one tensor of the pretrained model; `experts` is a sequence of same-shaped tensors
  of the fine-tuned models. A **task vector** is ``expert - base``. Every function returns a
  new tensor of `base`'s shape and leaves its inputs untouched.
- The experts are read one at a time (``experts[i]``), so a lazy sequence that loads each
  expert's tensor on access (as `TensorwiseMerger.merge_files` passes) keeps one stacked copy
  of the task vectors in memory, not two.
- `weights` (optional, one float per expert, default 1) scale each task vector; `scale` (λ)
  scales the merged task vector: the result is ``base + scale * merged_task_vector``.
- `density` is the fraction of each task vector's entries that is **kept**, in (0, 1]; the
  number kept is ``k = ⌊density · n⌋`` for a tensor of n entries, **per tensor** (as PEFT's
  `peft.utils.merge_utils` does; the TIES paper trims the whole flattened model at once).

TIES conventions (Yadav et al. 2023), and where published implementations differ:

- Trim: keep the k largest-magnitude entries of each task vector, zero the rest (entries of
  equal magnitude at the threshold are kept in index order; PEFT's `topk` may pick others).
- Elect: the sign of the total mass ``Σ_i w_i τ̂_i`` per entry. The weights multiply **after
  trimming** (a positive per-task weight cannot change which entries of that task vector are
  kept) and, by default, **after the election**, as PEFT does: the sign is elected on the
  unweighted trimmed vectors. ``weighted_election=True`` elects on the weighted ones (as
  mergekit does).
- Where the elected total is exactly zero: ``zero_sign="positive"`` (default, PEFT) elects +;
  ``zero_sign="majority"`` (the TIES authors' code) elects the sign of the sum of the tensor's
  elected signs.
- Disjoint mean: per entry, the mean of the weighted trimmed values whose sign agrees with the
  elected one (zeros never count); an entry no task keeps stays at the base value.

DARE (Yu et al. 2024): each entry of each task vector is kept with probability `density`
(dropped with p = 1 - density) and the kept entries are rescaled by 1/density, so the
expectation of a dropped task vector is the task vector; the dropped vectors are then combined
by a weighted sum (``combine="linear"``) or by TIES's election and disjoint mean
(``combine="ties"``, without trimming).

RegMean (Jin et al. 2023), for one `nn.Linear` whose weight W has shape (out, in) and computes
``y = x Wᵀ + b``: with the Gram matrix ``G_i = X_iᵀ X_i`` (in × in) of expert i's layer inputs,
the merged weight minimises ``Σ_i ‖X_i Wᵀ − X_i W_iᵀ‖²``, i.e.
``Wᵀ = (Σ_i G̃_i)⁻¹ Σ_i G̃_i W_iᵀ``, where ``G̃_i = α G_i + (1 − α) diag(G_i)`` scales the
off-diagonal entries by α.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = ["average", "dare", "disjoint_mean", "drop_and_rescale", "elect_sign", "regmean",
           "task_arithmetic", "task_vectors", "ties", "trim"]

ZeroSign = Literal["positive", "majority"]
Combine = Literal["linear", "ties"]


def task_vectors(base: Tensor, experts: Sequence[Tensor]) -> Tensor:
    """The experts' task vectors ``expert - base``, stacked on a new first dimension (in the
    base's dtype). The experts are read one at a time, so a lazy sequence that loads each
    expert on access never holds two copies of them."""
    if len(experts) == 0:
        raise ValueError("merging needs at least one expert tensor")
    stacked = torch.empty((len(experts), *base.shape), dtype=base.dtype, device=base.device)
    for i in range(len(experts)):
        torch.sub(experts[i].to(base.dtype), base, out=stacked[i])
    return stacked


def _weight_list(weights: Sequence[float] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0] * count
    if len(weights) != count:
        raise ValueError(f"{len(weights)} weights for {count} experts; give one per expert")
    return [float(w) for w in weights]


def average(experts: Sequence[Tensor]) -> Tensor:
    """The mean of the experts (summed one at a time, then divided by their number)."""
    if len(experts) == 0:
        raise ValueError("merging needs at least one expert tensor")
    total = experts[0].clone()
    for i in range(1, len(experts)):
        total.add_(experts[i])
    return total.div_(len(experts))


def task_arithmetic(base: Tensor, experts: Sequence[Tensor], scale: float,
                    weights: Sequence[float] | None = None) -> Tensor:
    """Task arithmetic (Ilharco et al. 2023): ``base + scale · Σ_i w_i (expert_i − base)``.

    The task vectors are summed, not averaged: with N experts and ``scale = 1/N`` this is the
    weight average of the experts. The experts are read one at a time."""
    if len(experts) == 0:
        raise ValueError("merging needs at least one expert tensor")
    total = torch.zeros_like(base)
    for i, weight in enumerate(_weight_list(weights, len(experts))):
        total.add_(experts[i].to(base.dtype) - base, alpha=weight)
    return total.mul_(scale).add_(base)


def _keep_top(row: Tensor, k: int) -> None:
    """Zero all but the k largest-magnitude entries of the flat `row`, in place (equal
    magnitudes at the threshold are kept in index order until k are kept)."""
    if k >= row.numel():
        return
    if k <= 0:
        row.zero_()
        return
    magnitude = row.abs()
    threshold = magnitude.kthvalue(row.numel() - k + 1).values
    keep = magnitude > threshold
    missing = k - int(keep.sum())
    if missing > 0:
        keep[(magnitude == threshold).nonzero().squeeze(1)[:missing]] = True
    row.masked_fill_(~keep, 0)


def _trim_(vectors: Tensor, density: float) -> Tensor:
    flat = vectors.view(vectors.shape[0], -1)
    k = int(density * flat.shape[1])
    for row in flat:
        _keep_top(row, k)
    return vectors


def trim(vectors: Tensor, density: float) -> Tensor:
    """Keep the ``k = ⌊density · n⌋`` largest-magnitude entries of each task vector (each row
    of `vectors`, n entries per row) and zero the others. Equal magnitudes at the threshold
    are kept in index order (PEFT's `topk` breaks such ties its own way)."""
    return _trim_(vectors.clone(), density)


def elect_sign(vectors: Tensor, zero_sign: ZeroSign = "positive") -> Tensor:
    """Per entry, the sign (+1 or -1) of the total mass of the stacked `vectors`; where the
    total is exactly zero, +1 (``"positive"``) or the sign of the sum of the other elected
    signs, +1 if that is zero too (``"majority"``)."""
    sign = vectors.sum(dim=0).sign_()
    if zero_sign == "majority":
        fill = 1.0 if sign.sum() >= 0 else -1.0
    elif zero_sign == "positive":
        fill = 1.0
    else:
        raise ValueError(f"zero_sign={zero_sign!r}; use 'positive' or 'majority'")
    return sign.masked_fill_(sign == 0, fill)


def disjoint_mean(vectors: Tensor, sign: Tensor) -> Tensor:
    """Per entry, the mean of the stacked `vectors`' nonzero values whose sign is `sign`
    (0 where none agrees). Summed row by row."""
    total = torch.zeros_like(sign)
    count = torch.zeros_like(sign)
    for row in vectors:
        agree = (row * sign) > 0
        total.add_(torch.where(agree, row, 0))
        count.add_(agree)
    return total.div_(count.clamp_(min=1))


def _elect_and_merge(sparse: Tensor, weights: Sequence[float] | None, zero_sign: ZeroSign,
                     weighted_election: bool) -> Tensor:
    """Sign election and disjoint mean of the (trimmed or dropped) task vectors `sparse`,
    which it scales by `weights` in place."""
    scale = torch.tensor(_weight_list(weights, sparse.shape[0]), dtype=sparse.dtype,
                         device=sparse.device).view(-1, *([1] * (sparse.dim() - 1)))
    if weighted_election:
        sparse.mul_(scale)
    sign = elect_sign(sparse, zero_sign)
    if not weighted_election and weights is not None:
        sparse.mul_(scale)
    return disjoint_mean(sparse, sign)


def ties(base: Tensor, experts: Sequence[Tensor], density: float, scale: float,
         weights: Sequence[float] | None = None, *, zero_sign: ZeroSign = "positive",
         weighted_election: bool = False) -> Tensor:
    """TIES-merging (Yadav et al. 2023): trim each task vector to its top ``⌊density · n⌋``
    magnitudes, elect each entry's sign by total mass, take the disjoint mean of the agreeing
    values, and add ``scale ×`` that to the base. Conventions: see the module docstring."""
    _check_density(density)
    trimmed = _trim_(task_vectors(base, experts), density)
    merged = _elect_and_merge(trimmed, weights, zero_sign, weighted_election)
    return merged.mul_(scale).add_(base)


def _drop_and_rescale_(vectors: Tensor, density: float, generator: torch.Generator | None
                       ) -> Tensor:
    if density >= 1.0:
        return vectors
    for row in vectors:
        keep = torch.bernoulli(torch.full_like(row, density), generator=generator)
        row.mul_(keep).div_(density)
    return vectors


def drop_and_rescale(vectors: Tensor, density: float, generator: torch.Generator | None
                     ) -> Tensor:
    """Keep each entry with probability `density` (Bernoulli, drawn row by row from
    `generator`) and divide the kept ones by `density`; density 1 keeps everything (and draws
    nothing)."""
    return _drop_and_rescale_(vectors.clone(), density, generator)


def dare(base: Tensor, experts: Sequence[Tensor], density: float, scale: float,
         generator: torch.Generator | None, combine: Combine = "linear",
         weights: Sequence[float] | None = None, *, zero_sign: ZeroSign = "positive",
         weighted_election: bool = False) -> Tensor:
    """DARE (Yu et al. 2024): drop each task-vector entry with probability ``1 − density``,
    rescale the kept ones by ``1/density``, then combine: ``"linear"`` gives
    ``base + scale · Σ_i w_i τ̃_i``; ``"ties"`` gives ``base + scale · disjoint_mean`` after
    TIES's sign election (no magnitude trim). The masks are drawn expert by expert, in order,
    from `generator` (the global generator when None)."""
    _check_density(density)
    if combine not in ("linear", "ties"):
        raise ValueError(f"combine={combine!r}; use 'linear' or 'ties'")
    dropped = _drop_and_rescale_(task_vectors(base, experts), density, generator)
    if combine == "ties":
        merged = _elect_and_merge(dropped, weights, zero_sign, weighted_election)
    else:
        merged = torch.zeros_like(base)
        for row, weight in zip(dropped, _weight_list(weights, len(dropped)), strict=True):
            merged.add_(row, alpha=weight)
    return merged.mul_(scale).add_(base)


def regmean(weights: Sequence[Tensor], grams: Sequence[Tensor], alpha: float,
            ridge: float = 0.0) -> Tensor:
    """RegMean's closed form for one `nn.Linear` (Jin et al. 2023).

    Args:
        weights: each expert's weight, shape (out, in) as `nn.Linear.weight`.
        grams: each expert's Gram matrix ``XᵀX`` of the layer's inputs, shape (in, in).
        alpha: the factor on the Grams' off-diagonal entries, in [0, 1] (0: a per-input-feature
            weighted average; 1: the plain least-squares merge).
        ridge: added to every (scaled) Gram's diagonal. It pulls directions no expert's inputs
            reach towards the experts' average (and keeps the system solvable) while leaving
            a lone expert unchanged; 0 adds nothing.

    Returns:
        ``W = ((Σ_i G̃_i)⁻¹ Σ_i G̃_i W_iᵀ)ᵀ``, shape (out, in), in the weights' dtype; the
        system is solved with `torch.linalg.solve` in float64.
    """
    if len(weights) != len(grams) or not weights:
        raise ValueError(f"{len(weights)} weights and {len(grams)} Gram matrices; give one "
                         "Gram matrix per expert weight")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r} is outside [0, 1]")
    dtype = weights[0].dtype
    lhs = torch.zeros_like(grams[0], dtype=torch.float64)
    rhs = torch.zeros_like(weights[0], dtype=torch.float64).T
    for weight, gram in zip(weights, grams, strict=True):
        scaled = _scale_off_diagonal(gram.to(torch.float64), alpha)
        scaled.diagonal().add_(ridge)
        lhs += scaled
        rhs += scaled @ weight.to(torch.float64).T
    return torch.linalg.solve(lhs, rhs).T.to(dtype).contiguous()


def _scale_off_diagonal(gram: Tensor, alpha: float) -> Tensor:
    """``α G + (1 − α) diag(G)``."""
    return alpha * gram + (1.0 - alpha) * torch.diag(gram.diagonal())


def _check_density(density: float) -> None:
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density={density!r} is outside (0, 1]; it is the fraction of each "
                         "task vector's entries that is kept")
