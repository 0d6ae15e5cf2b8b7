"""Choose task groups from an affinity matrix (`best_partitions`) and rank sources (`rank_sources`).

Disjoint groups (the default). Each task sits in exactly one group; the score of a partition
is its total within-group affinity on the symmetrised matrix S = (A + Aᵀ) / 2:

    score(P) = Σ_{g ∈ P} Σ_{i < j, i, j ∈ g} S_ij

(a task alone in its group contributes 0). `best_partitions` returns the best partition into
exactly k non-empty groups for every k = 1..K.

- T ≤ 12 tasks: exact, by dynamic programming over subsets of tasks,
  f_k(M) = max over G ⊆ M holding M's lowest task of score(G) + f_{k-1}(M \\ G),
  which visits every partition implicitly in O(3^T · K) steps (about a second for T = 12).
- T > 12: beam search. Tasks are placed one at a time (strongest total |affinity| first)
  into an existing group or a new one; the `beam_width` best partial partitions survive each
  step; the best complete partition is then improved by moving single tasks between groups
  while a move raises the score (every group kept non-empty). Not guaranteed optimal.

Overlapping groups (``overlap=True``), after TAG's network selection (Fifty et al. 2021,
"Efficiently Identifying Task Groupings for Multi-Task Learning", section 3). A task may be
trained in several groups and is served by the one it gains most from. The affinity onto
task t from group g is the mean of the directed affinities onto t from its group mates,

    a_t(g) = (1 / (|g| - 1)) Σ_{i ∈ g, i ≠ t} A_{i→t}        (0 when g = {t}),

and at most k groups g_1..g_k, covering every task, are chosen to maximise
Σ_t max_{g_j ∋ t} a_t(g_j). Exact for T ≤ 12: split the tasks into the sets that each group
serves, give each served set s its best group best(s) = max_{g ⊇ s} Σ_{t ∈ s} a_t(g), and
run the same subset dynamic programme over served sets. Beyond 12 tasks: the disjoint beam
result, then greedily add a task to a group while that raises the objective.

Each result records the search used and its wall time in seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from polytask.affinity.base import AffinityMatrix
from polytask.errors import ConfigError

#: The largest number of tasks searched exactly.
EXACT_MAX_TASKS = 12


@dataclass
class Partition:
    """Task groups and their predicted total within-group affinity."""

    groups: list[list[str]]
    score: float


@dataclass
class GroupingResult:
    """The best grouping for each number of groups k = 1..K under one affinity method."""

    method: str
    by_count: dict[int, Partition]
    search: str
    seconds: float


def best_partitions(matrix: AffinityMatrix, max_groups: int, overlap: bool = False,
                    beam_width: int = 64) -> GroupingResult:
    """The best grouping of `matrix`'s tasks into k = 1..`max_groups` groups (module docstring).

    Disjoint: exactly k non-empty groups. With `overlap`: at most k possibly overlapping
    groups covering every task, scored as in TAG.

    Raises:
        polytask.errors.ConfigError: `max_groups` or `beam_width` below 1.
    """
    _check_positive("max_groups", max_groups)
    _check_positive("beam_width", beam_width)
    started = time.perf_counter()
    size = len(matrix.tasks)
    counts = range(1, min(max_groups, size) + 1)
    exact = size <= EXACT_MAX_TASKS
    if overlap:
        directed = np.nan_to_num(matrix.array(), nan=0.0)
        np.fill_diagonal(directed, 0.0)
        if exact:
            found = _exact_overlapping(directed, counts)
        else:
            found = _greedy_overlapping(directed, matrix.symmetrised(), counts, beam_width)
    elif exact:
        found = _exact_disjoint(matrix.symmetrised(), counts)
    else:
        found = _beam_disjoint(matrix.symmetrised(), counts, beam_width)
    by_count = {
        k: Partition([[matrix.tasks[t] for t in group] for group in groups], score)
        for k, (groups, score) in found.items()
    }
    search = "exact" if exact else f"beam (width {beam_width})"
    if overlap:
        search += ", overlapping groups"
    return GroupingResult(matrix.method, by_count, search, time.perf_counter() - started)


def rank_sources(matrix: AffinityMatrix, target: str) -> list[tuple[str, float]]:
    """The other tasks ranked as sources for `target`, best first, by A_{source→target}.

    Pairs that could not be measured (NaN) come last.

    Raises:
        polytask.errors.ConfigError: `target` is not one of the matrix's tasks.
    """
    if target not in matrix.tasks:
        raise ConfigError(
            f"--target {target!r} is not a task of the {matrix.method} affinity matrix; "
            f"choose one of: {', '.join(matrix.tasks)}"
        )
    column = matrix.tasks.index(target)
    ranked = [
        (name, float(matrix.values[row][column]))
        for row, name in enumerate(matrix.tasks) if row != column
    ]
    return sorted(ranked, key=lambda pair: (np.isnan(pair[1]), -np.nan_to_num(pair[1])))


def partition_score(symmetric: np.ndarray, groups: list[list[int]]) -> float:
    """Σ over groups of Σ_{i<j in the group} symmetric[i, j]: the disjoint score."""
    return float(sum(symmetric[np.ix_(g, g)].sum() / 2.0 for g in groups))


def _check_positive(field: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{field} must be at least 1, got {value}; pass a positive number")


# --- exact search: dynamic programming over subsets ----------------------------------------

Found = dict[int, tuple[list[list[int]], float]]


def _members(mask: int) -> list[int]:
    return [t for t in range(mask.bit_length()) if mask >> t & 1]


def _subset_sums(weights: np.ndarray) -> np.ndarray:
    """sums[m] = Σ_{t ∈ m} weights[t] for every mask m over len(weights) tasks."""
    sums = np.zeros(1)
    for weight in weights:
        sums = np.concatenate([sums, sums + weight])
    return sums


def _pair_scores(symmetric: np.ndarray) -> np.ndarray:
    """score[m] = Σ_{i<j ∈ m} symmetric[i, j] for every mask m."""
    score = np.zeros(1)
    for task in range(len(symmetric)):
        with_task = score + _subset_sums(symmetric[task, :task])
        score = np.concatenate([score, with_task])
    return score


def _submasks_with_lowest(mask: int) -> np.ndarray:
    """Every subset of `mask` that holds its lowest task (the group that task joins)."""
    lowest = mask & -mask
    subs = np.zeros(1, dtype=np.int64)
    for task in _members(mask ^ lowest):
        subs = np.concatenate([subs, subs | (1 << task)])
    return subs | lowest


def _partition_dp(value: np.ndarray, size: int, counts: range) -> dict[int, list[int]]:
    """For each k in `counts`, the best split of all tasks into exactly k blocks maximising the
    sum of value[block] (blocks as masks)."""
    full = (1 << size) - 1
    candidates = [_submasks_with_lowest(mask) if mask else np.zeros(0, np.int64)
                  for mask in range(full + 1)]
    previous = np.full(full + 1, -np.inf)
    previous[0] = 0.0
    choice: list[np.ndarray] = []
    for _ in range(max(counts)):
        current = np.full(full + 1, -np.inf)
        chosen = np.zeros(full + 1, dtype=np.int64)
        for mask in range(1, full + 1):
            subs = candidates[mask]
            totals = value[subs] + previous[mask ^ subs]
            best = int(np.argmax(totals))
            current[mask], chosen[mask] = totals[best], subs[best]
        choice.append(chosen)
        previous = current
    blocks: dict[int, list[int]] = {}
    for k in counts:
        mask, found = full, []
        for level in range(k - 1, -1, -1):
            block = int(choice[level][mask])
            found.append(block)
            mask ^= block
        blocks[k] = sorted(found, key=lambda b: b & -b)
    return blocks


def _exact_disjoint(symmetric: np.ndarray, counts: range) -> Found:
    size = len(symmetric)
    blocks = _partition_dp(_pair_scores(symmetric), size, counts)
    found: Found = {}
    for k, masks in blocks.items():
        groups = [_members(mask) for mask in masks]
        found[k] = (groups, partition_score(symmetric, groups))
    return found


def _affinity_onto(directed: np.ndarray, group: list[int]) -> np.ndarray:
    """a_t(group) for each t in the group: the mean directed affinity onto t from its mates."""
    if len(group) == 1:
        return np.zeros(1)
    block = directed[np.ix_(group, group)]
    return block.sum(axis=0) / (len(group) - 1)


def _best_group_per_served_set(directed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each served set s (mask): max over groups g ⊇ s of Σ_{t ∈ s} a_t(g), and that g."""
    size = len(directed)
    best = np.full(1 << size, -np.inf)
    best_group = np.zeros(1 << size, dtype=np.int64)
    for group_mask in range(1, 1 << size):
        members = _members(group_mask)
        sums = _subset_sums(_affinity_onto(directed, members))
        served = np.zeros(1, dtype=np.int64)
        for task in members:
            served = np.concatenate([served, served | (1 << task)])
        better = sums > best[served]
        best[served[better]] = sums[better]
        best_group[served[better]] = group_mask
    return best, best_group


def _overlap_score(directed: np.ndarray, groups: list[list[int]]) -> float:
    """Σ_t max over groups holding t of a_t(group) (TAG's objective)."""
    served = np.full(len(directed), -np.inf)
    for group in groups:
        served[group] = np.maximum(served[group], _affinity_onto(directed, group))
    return float(served.sum())


def _exact_overlapping(directed: np.ndarray, counts: range) -> Found:
    size = len(directed)
    best, best_group = _best_group_per_served_set(directed)
    best[0] = 0.0
    found: Found = {}
    for k, masks in _partition_dp(best, size, counts).items():
        group_masks = sorted({int(best_group[mask]) for mask in masks}, key=lambda m: m & -m)
        groups = [_members(mask) for mask in group_masks]
        found[k] = (groups, _overlap_score(directed, groups))
    return found


# --- beyond 12 tasks: beam search, local moves, greedy overlap ------------------------------

def _beam_disjoint(symmetric: np.ndarray, counts: range, beam_width: int) -> Found:
    order = np.argsort(-np.abs(symmetric).sum(axis=1), kind="stable")
    found: Found = {}
    for k in counts:
        groups = _beam_search(symmetric, [int(t) for t in order], k, beam_width)
        groups = _improve_by_moves(symmetric, groups)
        groups = sorted((sorted(g) for g in groups), key=lambda g: g[0])
        found[k] = (groups, partition_score(symmetric, groups))
    return found


def _beam_search(symmetric: np.ndarray, order: list[int], k: int,
                 width: int) -> list[list[int]]:
    """Place tasks in `order`, keeping the `width` best partial partitions into ≤ k groups
    that can still reach exactly k groups."""
    beam: list[tuple[float, list[list[int]]]] = [(0.0, [])]
    for placed, task in enumerate(order):
        left_after = len(order) - placed - 1
        extended: list[tuple[float, list[list[int]]]] = []
        for score, groups in beam:
            for index, group in enumerate(groups):
                if k - len(groups) <= left_after:
                    gain = float(symmetric[task, group].sum())
                    grown = [*groups[:index], [*group, task], *groups[index + 1:]]
                    extended.append((score + gain, grown))
            if len(groups) < k:
                extended.append((score, [*groups, [task]]))
        extended.sort(key=lambda item: -item[0])
        beam = extended[:width]
    return max(beam, key=lambda item: item[0])[1]


def _improve_by_moves(symmetric: np.ndarray, groups: list[list[int]]) -> list[list[int]]:
    """Move single tasks to the group that gains most while a move raises the score."""
    groups = [list(g) for g in groups]
    improved = True
    while improved:
        improved = False
        for source in range(len(groups)):
            for task in list(groups[source]):
                if len(groups[source]) == 1:
                    continue
                loss = float(symmetric[task, groups[source]].sum())
                gains = [float(symmetric[task, g].sum()) if i != source else -np.inf
                         for i, g in enumerate(groups)]
                target = int(np.argmax(gains))
                if gains[target] > loss + 1e-12:
                    groups[source].remove(task)
                    groups[target].append(task)
                    improved = True
    return groups


def _greedy_overlapping(directed: np.ndarray, symmetric: np.ndarray, counts: range,
                        beam_width: int) -> Found:
    found: Found = {}
    for k, (groups, _) in _beam_disjoint(symmetric, counts, beam_width).items():
        groups = _add_tasks_greedily(directed, groups)
        found[k] = (groups, _overlap_score(directed, groups))
    return found


def _add_tasks_greedily(directed: np.ndarray, groups: list[list[int]]) -> list[list[int]]:
    """Add the single task to a group that raises TAG's objective most, until none does."""
    groups = [sorted(g) for g in groups]
    current = _overlap_score(directed, groups)
    while True:
        best_gain, best_move = 1e-12, None
        for index, group in enumerate(groups):
            for task in range(len(directed)):
                if task in group:
                    continue
                trial = [*groups[:index], sorted([*group, task]), *groups[index + 1:]]
                gain = _overlap_score(directed, trial) - current
                if gain > best_gain:
                    best_gain, best_move = gain, (index, task)
        if best_move is None:
            return groups
        index, task = best_move
        groups[index] = sorted([*groups[index], task])
        current += best_gain
