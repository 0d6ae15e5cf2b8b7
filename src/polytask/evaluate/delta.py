"""Summaries across tasks: relative change, delta-m% and mean rank.

Δm% (Maninis et al., "Attentive Single-Tasking of Multiple Tasks", CVPR 2019; used as the
headline number by Nash-MTL, Navon et al. 2022, and most later multi-task papers) is the
mean over tasks of the relative change of a multi-task model's metric against the
single-task baseline, with the sign flipped for metrics where lower is better.

Sign convention: **polytask prints positive = better than the baseline.** The papers print
``Δm = (1/T) Σ_t (-1)^{l_t} (M_m,t - M_b,t) / M_b,t`` with ``l_t = 1`` when *higher* is
better, so there a *negative* Δm means better. To compare a polytask number with a paper's
table, negate one of them.

We divide by ``|baseline|`` rather than ``baseline`` so that "positive = better" still holds
for metrics whose baseline can be negative (MCC, Pearson); for positive baselines, the
only case in the papers, the two agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

__all__ = ["delta_m", "mean_rank", "relative_change"]


def relative_change(value: float, baseline: float, higher_is_better: bool) -> float:
    """Relative change of `value` over `baseline` in percent; positive means better.

    ``100 * (value - baseline) / |baseline|``, negated when lower is better. For example,
    accuracy 0.88 vs 0.80 gives +10.0; an MAE of 0.9 vs 1.0 gives +10.0 too.

    Raises:
        ValueError: if `baseline` is 0 (the relative change is undefined) or either number
            is NaN or infinite.
    """
    if not (math.isfinite(value) and math.isfinite(baseline)):
        raise ValueError(
            f"relative_change: value ({value}) and baseline ({baseline}) must be finite numbers"
        )
    if baseline == 0:
        raise ValueError(
            "relative_change: the baseline is 0, so the relative change is undefined; "
            "report the absolute difference for this task or pick a metric whose "
            "baseline is non-zero"
        )
    change = 100.0 * (value - baseline) / abs(baseline)
    return change if higher_is_better else -change


def delta_m(entries: Mapping[str, tuple[float, float | None, bool]]) -> float | None:
    """Δm% in percent, positive = better: mean over tasks of `relative_change`.

    Args:
        entries: task name -> (value, baseline value or None, higher_is_better).

    Returns:
        The mean relative change, or None when any task has no baseline (a partial Δm%
        would not be comparable to a full one).

    Raises:
        ValueError: if `entries` is empty, or a baseline is 0 (see `relative_change`).
    """
    if not entries:
        raise ValueError(
            "delta_m: no tasks given; pass task -> (value, baseline, higher_is_better)"
        )
    if any(baseline is None for _, baseline, _ in entries.values()):
        return None
    changes = []
    for task, (value, baseline, hib) in entries.items():
        assert baseline is not None
        try:
            changes.append(relative_change(value, baseline, hib))
        except ValueError as error:
            raise ValueError(f"delta_m: task {task!r}: {error}") from None
    return float(np.mean(changes))


def mean_rank(
    scores: Mapping[str, Mapping[str, float]], higher_is_better: Mapping[str, bool]
) -> dict[str, float]:
    """Mean rank of each method over tasks (1 = best on a task; ties share the average rank).

    Args:
        scores: method -> task -> metric value. Every method must score every task.
        higher_is_better: task -> direction of that task's metric.

    Returns:
        method -> mean rank over tasks (lower is better), in the order of `scores`.

    Raises:
        ValueError: if there are no methods, a method lacks a task, a task has no direction,
            or a score is NaN.
    """
    if not scores:
        raise ValueError("mean_rank: no methods given; pass method -> task -> score")
    methods = list(scores)
    tasks = list(dict.fromkeys(task for method in methods for task in scores[method]))
    if not tasks:
        raise ValueError("mean_rank: no task scores given")
    for method in methods:
        missing = [task for task in tasks if task not in scores[method]]
        if missing:
            raise ValueError(
                f"mean_rank: method {method!r} has no score for task(s) {', '.join(missing)}; "
                "every method must be scored on the same tasks"
            )
    no_direction = [task for task in tasks if task not in higher_is_better]
    if no_direction:
        raise ValueError(
            f"mean_rank: no higher_is_better entry for task(s) {', '.join(no_direction)}"
        )
    from scipy.stats import rankdata  # imported here: scipy.stats is slow to import

    ranks = np.zeros((len(methods), len(tasks)))
    for j, task in enumerate(tasks):
        column = np.array([float(scores[method][task]) for method in methods])
        if not np.all(np.isfinite(column)):
            raise ValueError(f"mean_rank: task {task!r} has a NaN or infinite score")
        ranks[:, j] = rankdata(-column if higher_is_better[task] else column, method="average")
    return {method: float(ranks[i].mean()) for i, method in enumerate(methods)}
