"""The leaderboard on hand-made results: mean ± std, Δm% per seed, mean rank with lower-is-
better metrics and ties, cost ratios, ordering and the Markdown table."""

from __future__ import annotations

import statistics

import pytest

from polytask.evaluate.leaderboard import build_leaderboard, leaderboard_markdown, stats

BASELINE = {0: {"acc": 0.80, "mae": 2.0}, 1: {"acc": 0.82, "mae": 2.2}}


def _run(balancer: str, seed: int, acc: float, mae: float, step: float = 0.01,
         architecture: str = "hard_sharing") -> dict[str, object]:
    base = BASELINE[seed]
    return {
        "balancer": balancer, "architecture": architecture, "seed": seed,
        "tasks": {
            "acc": {"metric": "accuracy", "higher_is_better": True, "value": acc,
                    "baseline": base["acc"]},
            "mae": {"metric": "mae", "higher_is_better": False, "value": mae,
                    "baseline": base["mae"]},
        },
        "wall_time_s": 10.0 * step / 0.01, "median_step_time_s": step,
        "run_dir": f"cells/{architecture}/{balancer}/seed{seed}",
    }


def _runs() -> list[dict[str, object]]:
    return [
        # ew: acc +10% / mae -10% worse on seed 0; acc 0 / mae 0 on seed 1
        _run("ew", 0, 0.88, 2.2), _run("ew", 1, 0.82, 2.2),
        # pcgrad: better accuracy, same mae as ew on average (ties on mae with ew)
        _run("pcgrad", 0, 0.90, 2.2, step=0.03), _run("pcgrad", 1, 0.86, 2.2, step=0.03),
        # uw: worse accuracy, lowest (best) mae
        _run("uw", 0, 0.80, 1.8, step=0.011), _run("uw", 1, 0.78, 2.0, step=0.011),
    ]


def test_stats_mean_sample_std_and_single_value() -> None:
    assert stats([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3, "values": [1.0, 2.0, 3.0]}
    assert stats([4.0, None])["std"] is None and stats([4.0])["mean"] == 4.0
    assert stats([])["mean"] is None


def test_per_task_mean_std_and_delta_m_per_seed() -> None:
    board = build_leaderboard(_runs())
    methods = {m["balancer"]: m for m in board["methods"]}
    ew = methods["ew"]
    assert ew["tasks"]["acc"]["mean"] == pytest.approx(0.85)
    assert ew["tasks"]["acc"]["std"] == pytest.approx(statistics.stdev([0.88, 0.82]))
    # seed 0: (+10 + -10)/2 = 0 ; seed 1: (0 + 0)/2 = 0
    assert ew["delta_m"]["values"] == pytest.approx([0.0, 0.0])
    # pcgrad seed 0: (+12.5 - 10)/2 = 1.25 ; seed 1: (100*0.04/0.82 + 0)/2
    pc = [1.25, 100 * 0.04 / 0.82 / 2]
    assert methods["pcgrad"]["delta_m"]["values"] == pytest.approx(pc)
    assert methods["pcgrad"]["delta_m"]["mean"] == pytest.approx(sum(pc) / 2)
    assert methods["pcgrad"]["delta_m"]["std"] == pytest.approx(statistics.stdev(pc))
    # uw, lower-is-better mae: 1.8 vs 2.0 is +10%; 2.0 vs 2.2 is +9.09%
    uw = [(0.0 + 10.0) / 2, (100 * -0.04 / 0.82 + 100 * 0.2 / 2.2) / 2]
    assert methods["uw"]["delta_m"]["values"] == pytest.approx(uw)
    # single-task reference: one baseline per seed
    assert board["single_task"]["acc"]["mean"] == pytest.approx(0.81)
    assert board["single_task"]["mae"]["values"] == pytest.approx([2.0, 2.2])


def test_mean_rank_direction_and_ties() -> None:
    methods = {m["balancer"]: m for m in build_leaderboard(_runs())["methods"]}
    # acc means: pcgrad 0.88 (1), ew 0.85 (2), uw 0.79 (3)
    # mae means (lower is better): uw 1.9 (1), ew = pcgrad = 2.2 tie for 2nd/3rd -> 2.5 each
    assert methods["pcgrad"]["mean_rank"] == pytest.approx((1 + 2.5) / 2)
    assert methods["ew"]["mean_rank"] == pytest.approx((2 + 2.5) / 2)
    assert methods["uw"]["mean_rank"] == pytest.approx((3 + 1) / 2)


def test_order_positions_and_step_time_ratio() -> None:
    board = build_leaderboard(_runs())
    order = [m["balancer"] for m in board["methods"]]
    deltas = [m["delta_m"]["mean"] for m in board["methods"]]
    assert deltas == sorted(deltas, reverse=True)
    assert [m["position"] for m in board["methods"]] == [1, 2, 3]
    assert order == ["uw", "pcgrad", "ew"]
    methods = {m["balancer"]: m for m in board["methods"]}
    assert methods["ew"]["step_time_ratio"] == pytest.approx(1.0)
    assert methods["pcgrad"]["step_time_ratio"] == pytest.approx(3.0)
    assert methods["uw"]["step_time_ratio"] == pytest.approx(1.1)
    assert methods["pcgrad"]["wall_time_s"]["mean"] == pytest.approx(30.0)
    assert methods["ew"]["runs"] == ["cells/hard_sharing/ew/seed0", "cells/hard_sharing/ew/seed1"]


def test_ratio_is_per_architecture_and_missing_reference_gives_none() -> None:
    runs = [_run("ew", 0, 0.8, 2.0, step=0.02, architecture="mmoe"),
            _run("pcgrad", 0, 0.8, 2.0, step=0.04, architecture="mmoe"),
            _run("pcgrad", 0, 0.8, 2.0, step=0.04, architecture="cgc")]
    methods = {m["name"]: m for m in build_leaderboard(runs)["methods"]}
    assert methods["pcgrad · mmoe"]["step_time_ratio"] == pytest.approx(2.0)
    assert methods["pcgrad · cgc"]["step_time_ratio"] is None
    # all equal: every method ties on every task
    assert {m["mean_rank"] for m in methods.values()} == {2.0}


def test_missing_baseline_gives_no_delta_m_and_sorts_last() -> None:
    runs = _runs()
    no_base = _run("famo", 0, 0.99, 1.0)
    no_base["tasks"]["mae"]["baseline"] = None  # type: ignore[index]
    board = build_leaderboard([*runs, no_base])
    assert board["methods"][-1]["balancer"] == "famo"
    assert board["methods"][-1]["delta_m"]["mean"] is None


def test_rejects_empty_and_mismatched_tasks() -> None:
    with pytest.raises(ValueError, match="no finished runs"):
        build_leaderboard([])
    other = _run("ew", 0, 0.8, 2.0)
    other["tasks"] = {"acc": other["tasks"]["acc"]}  # type: ignore[index]
    with pytest.raises(ValueError, match="different tasks"):
        build_leaderboard([_run("ew", 0, 0.8, 2.0), other])


def test_markdown_table() -> None:
    text = leaderboard_markdown(build_leaderboard(_runs()), "Leaderboard · toy", ["a note"])
    lines = text.splitlines()
    assert lines[0] == "# Leaderboard · toy"
    header = next(line for line in lines if line.startswith("| #"))
    assert "acc accuracy ↑" in header and "mae mae ↓" in header and "Δm% ↑" in header
    assert "MR ↓" in header and "step ÷ ew" in header
    rows = [line for line in lines if line.startswith("| ") and line[2:3] not in "#-"]
    assert len(rows) == 4  # 3 methods + the single-task reference
    assert rows[0].startswith("| 1 | uw | hard_sharing | 0.7900 ± 0.0141 | 1.9000 ± 0.1414 |")
    assert "| single-task | (baseline) |" in rows[-1]
    assert "3.00×" in text and "a note" in text
