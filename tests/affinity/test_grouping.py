"""The grouping search: exact equals brute force, beam finds planted optima, the overlap
option (TAG's network selection), source ranking, and the matrix's JSON form."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
import pytest

from polytask.affinity import AffinityMatrix, best_partitions, grouping, rank_sources
from polytask.errors import ConfigError


def matrix_of(values: np.ndarray, method: str = "test") -> AffinityMatrix:
    values = values.astype(float).copy()
    np.fill_diagonal(values, np.nan)
    return AffinityMatrix(method, [f"t{i}" for i in range(len(values))], values.tolist(),
                          "a test matrix")


def set_partitions(items: list[int]) -> Iterator[list[list[int]]]:
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partial in set_partitions(rest):
        yield [[first], *partial]
        for i in range(len(partial)):
            yield [*partial[:i], [first, *partial[i]], *partial[i + 1:]]


def disjoint_score(values: np.ndarray, groups: list[list[int]]) -> float:
    return sum((values[i, j] + values[j, i]) / 2 for g in groups
               for i, j in itertools.combinations(g, 2))


def indices(groups: list[list[str]]) -> list[list[int]]:
    return [[int(name[1:]) for name in g] for g in groups]


@pytest.mark.parametrize("size", range(2, 8))
def test_exact_search_equals_brute_force_for_every_group_count(size: int) -> None:
    rng = np.random.default_rng(size)
    for _ in range(3):
        values = rng.normal(size=(size, size))
        result = best_partitions(matrix_of(values), max_groups=size)
        assert result.search == "exact"
        for k in range(1, size + 1):
            brute = max(disjoint_score(values, p) for p in set_partitions(list(range(size)))
                        if len(p) == k)
            found = result.by_count[k]
            groups = indices(found.groups)
            assert len(groups) == k and all(groups)
            assert sorted(t for g in groups for t in g) == list(range(size))
            assert found.score == pytest.approx(brute, abs=1e-9)
            assert disjoint_score(values, groups) == pytest.approx(found.score, abs=1e-9)


def planted_blocks(sizes: list[int], seed: int) -> tuple[np.ndarray, list[list[int]]]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    order = rng.permutation(len(labels))
    labels = labels[order]
    same = labels[:, None] == labels[None, :]
    values = np.where(same, 1.0, -1.0) + 0.3 * rng.normal(size=same.shape)
    blocks = [sorted(np.flatnonzero(labels == b).tolist()) for b in range(len(sizes))]
    return values, blocks


@pytest.mark.parametrize("sizes", [[8, 8], [4, 4, 4, 4], [3, 5, 8], [2, 2, 3, 4, 5]])
def test_beam_finds_the_planted_optimum_for_16_tasks(sizes: list[int]) -> None:
    values, blocks = planted_blocks(sizes, seed=len(sizes))
    result = best_partitions(matrix_of(values), max_groups=len(sizes), beam_width=16)
    assert result.search == "beam (width 16)" and result.seconds > 0
    found = result.by_count[len(sizes)]
    assert sorted(indices(found.groups)) == sorted(blocks)
    assert found.score == pytest.approx(disjoint_score(values, blocks))


def test_beam_never_beats_the_exact_search_and_finds_it_on_small_random_matrices(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    values = rng.normal(size=(9, 9))
    exact = best_partitions(matrix_of(values), max_groups=4)
    monkeypatch.setattr(grouping, "EXACT_MAX_TASKS", 5)
    beam = best_partitions(matrix_of(values), max_groups=4)
    assert beam.search.startswith("beam")
    for k in range(1, 5):
        assert beam.by_count[k].score <= exact.by_count[k].score + 1e-9
        assert beam.by_count[k].score == pytest.approx(exact.by_count[k].score)


def affinity_onto(values: np.ndarray, group: tuple[int, ...], task: int) -> float:
    mates = [i for i in group if i != task]
    return float(np.mean([values[i, task] for i in mates])) if mates else 0.0


def overlap_score(values: np.ndarray, groups: list[tuple[int, ...]]) -> float:
    size = len(values)
    return sum(max(affinity_onto(values, g, t) for g in groups if t in g) for t in range(size))


@pytest.mark.parametrize("size", [3, 4, 5])
def test_overlapping_groups_match_a_brute_force_over_collections_of_groups(size: int) -> None:
    rng = np.random.default_rng(size)
    values = rng.normal(size=(size, size))
    subsets = [s for r in range(1, size + 1) for s in itertools.combinations(range(size), r)]
    result = best_partitions(matrix_of(values), max_groups=3, overlap=True)
    assert result.search == "exact, overlapping groups"
    for k in range(1, 4):
        brute = max(overlap_score(values, list(chosen))
                    for count in range(1, k + 1)
                    for chosen in itertools.combinations(subsets, count)
                    if set().union(*chosen) == set(range(size)))
        found = result.by_count[k]
        groups = [tuple(g) for g in indices(found.groups)]
        assert len(groups) <= k
        assert set().union(*map(set, groups)) == set(range(size))
        assert found.score == pytest.approx(brute, abs=1e-9)
        assert overlap_score(values, groups) == pytest.approx(found.score, abs=1e-9)


def hub_matrix() -> np.ndarray:
    values = -np.ones((5, 5))
    values[0, :] = 2.0
    values[:, 0] = 1.0
    values[1, 2] = values[2, 1] = values[3, 4] = values[4, 3] = 1.0
    return values


def test_overlap_puts_a_hub_task_into_both_of_two_conflicting_groups() -> None:
    """t0 helps everyone a lot; {t1, t2} and {t3, t4} hurt each other. With two groups TAG's
    selection trains t0 with each block (each task then gains (2 + 1) / 2 from its group);
    disjoint groups must leave one block without t0."""
    values = hub_matrix()
    overlapping = best_partitions(matrix_of(values), max_groups=2, overlap=True).by_count[2]
    assert sorted(overlapping.groups) == [["t0", "t1", "t2"], ["t0", "t3", "t4"]]
    assert overlapping.score == pytest.approx(1.0 + 4 * 1.5)
    disjoint = best_partitions(matrix_of(values), max_groups=2).by_count[2]
    assert sum(len(g) for g in disjoint.groups) == 5


def test_overlap_score_never_drops_with_more_groups_and_one_group_holds_all() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(size=(7, 7))
    result = best_partitions(matrix_of(values), max_groups=5, overlap=True)
    scores = [result.by_count[k].score for k in range(1, 6)]
    assert scores == sorted(scores)
    assert result.by_count[1].groups == [[f"t{i}" for i in range(7)]]


def test_beyond_the_exact_limit_overlap_is_greedy_and_keeps_every_task_covered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    values = hub_matrix()
    monkeypatch.setattr(grouping, "EXACT_MAX_TASKS", 3)
    result = best_partitions(matrix_of(values), max_groups=2, overlap=True)
    assert result.search == "beam (width 64), overlapping groups"
    assert sorted(result.by_count[2].groups) == [["t0", "t1", "t2"], ["t0", "t3", "t4"]]


def test_rank_sources_orders_by_affinity_onto_the_target_with_unmeasured_last() -> None:
    values = np.array([[0, 0.1, 0.5], [0.9, 0, math.nan], [-0.2, 0.3, 0]])
    matrix = matrix_of(values)
    assert rank_sources(matrix, "t0") == [("t1", 0.9), ("t2", -0.2)]
    ranked = rank_sources(matrix, "t2")
    assert ranked[0] == ("t0", 0.5) and ranked[1][0] == "t1" and math.isnan(ranked[1][1])
    with pytest.raises(ConfigError, match=r"'nope'.*t0, t1, t2"):
        rank_sources(matrix, "nope")


def test_bad_search_settings_are_config_errors() -> None:
    matrix = matrix_of(np.zeros((3, 3)))
    with pytest.raises(ConfigError, match="max_groups must be at least 1, got 0"):
        best_partitions(matrix, max_groups=0)
    with pytest.raises(ConfigError, match="beam_width"):
        best_partitions(matrix, max_groups=2, beam_width=0)


def test_more_groups_than_tasks_stops_at_one_task_per_group() -> None:
    result = best_partitions(matrix_of(np.ones((3, 3))), max_groups=5)
    assert sorted(result.by_count) == [1, 2, 3]
    assert result.by_count[3].score == 0.0


def test_the_matrix_round_trips_through_json_and_symmetrises_with_a_zero_diagonal() -> None:
    values = np.array([[0, 1.0, math.nan], [3.0, 0, 2.0], [1.0, 0.0, 0]])
    matrix = matrix_of(values)
    data = matrix.to_json()
    assert data["values"][0][0] is None and data["values"][0][2] is None
    again = AffinityMatrix.from_json(data)
    assert again.tasks == matrix.tasks and math.isnan(again.values[0][2])
    assert again.values[1][0] == 3.0
    np.testing.assert_allclose(again.symmetrised(),
                               [[0, 2.0, 0.5], [2.0, 0, 1.0], [0.5, 1.0, 0]])
    with pytest.raises(ValueError, match="must be 3 x 3"):
        AffinityMatrix("m", ["a", "b", "c"], [[0.0, 1.0]], "d")
