"""relative_change, delta_m (positive = better) and mean_rank."""

from __future__ import annotations

import math

import numpy as np
import pytest

from polytask.evaluate.delta import delta_m, mean_rank, relative_change


def test_relative_change_signs() -> None:
    assert relative_change(0.88, 0.80, True) == pytest.approx(10.0)
    assert relative_change(0.72, 0.80, True) == pytest.approx(-10.0)
    assert relative_change(0.9, 1.0, False) == pytest.approx(10.0)  # lower error: better
    assert relative_change(1.1, 1.0, False) == pytest.approx(-10.0)
    # a negative baseline (e.g. MCC) keeps "positive = better"
    assert relative_change(-0.1, -0.2, True) == pytest.approx(50.0)


def test_relative_change_rejects_zero_and_nan() -> None:
    with pytest.raises(ValueError, match="baseline is 0"):
        relative_change(0.5, 0.0, True)
    with pytest.raises(ValueError, match="finite"):
        relative_change(math.nan, 1.0, True)


def test_delta_m_mean_and_missing_baseline() -> None:
    entries = {"acc": (0.88, 0.80, True), "mae": (0.9, 1.0, False), "f1": (0.5, 0.5, True)}
    assert delta_m(entries) == pytest.approx(20.0 / 3)
    assert delta_m({**entries, "new": (0.7, None, True)}) is None


def test_delta_m_is_the_negated_paper_formula() -> None:
    # Maninis et al. / Nash-MTL: (1/T) sum (-1)^{l_t} (M_m - M_b) / M_b, l_t = 1 if higher
    # is better, printed in percent; negative there means better.
    rng = np.random.default_rng(0)
    values, baselines = rng.uniform(0.1, 2, 6), rng.uniform(0.1, 2, 6)
    hib = [True, False, True, True, False, False]
    paper = 100 * np.mean(
        [(-1) ** int(h) * (v - b) / b for v, b, h in zip(values, baselines, hib, strict=True)]
    )
    entries = {
        f"t{i}": (float(v), float(b), h)
        for i, (v, b, h) in enumerate(zip(values, baselines, hib, strict=True))
    }
    assert delta_m(entries) == pytest.approx(-paper)


def test_delta_m_errors_name_the_task() -> None:
    with pytest.raises(ValueError, match="no tasks"):
        delta_m({})
    with pytest.raises(ValueError, match=r"task 'b'.*baseline is 0"):
        delta_m({"a": (1.0, 1.0, True), "b": (1.0, 0.0, True)})


def test_mean_rank_with_ties_and_directions() -> None:
    scores = {
        "A": {"t1": 0.9, "t2": 1.0},
        "B": {"t1": 0.8, "t2": 0.5},
        "C": {"t1": 0.9, "t2": 2.0},
    }
    # t1 (higher better): A and C tie for 1-2 -> 1.5 each, B 3.
    # t2 (lower better): B 1, A 2, C 3.
    ranks = mean_rank(scores, {"t1": True, "t2": False})
    assert ranks == pytest.approx({"A": 1.75, "B": 2.0, "C": 2.25})
    assert list(ranks) == ["A", "B", "C"]


def test_mean_rank_rejects_incomplete_input() -> None:
    with pytest.raises(ValueError, match="no methods"):
        mean_rank({}, {})
    with pytest.raises(ValueError, match="'B' has no score for task"):
        mean_rank({"A": {"t1": 1.0, "t2": 1.0}, "B": {"t1": 1.0}}, {"t1": True, "t2": True})
    with pytest.raises(ValueError, match=r"higher_is_better entry for task.*t2"):
        mean_rank({"A": {"t1": 1.0, "t2": 1.0}}, {"t1": True})
    with pytest.raises(ValueError, match="NaN"):
        mean_rank({"A": {"t1": math.nan}, "B": {"t1": 1.0}}, {"t1": True})
