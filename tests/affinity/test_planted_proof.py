"""The proof that affinity-based grouping works, on the `planted` suite at its defaults:
grad_cosine and tag recover the planted partition (adjusted Rand index ≥ 0.9), and training
the recovered groups beats training all tasks together in Δm% (over two generated suites)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from polytask.affinity.run import run_affinity
from polytask.bench import bench_config, run_grouping_bench
from polytask.config import RunConfig

QUIET = Console(file=io.StringIO())


def _planted(seed: int) -> RunConfig:
    """The planted suite (default tasks, groups and noise) generated from `seed`, with the
    suite's recommended training settings and no per-run report (the figures cost time)."""
    return bench_config("planted", overrides=[f"suite.seed={seed}", "train.callbacks=[]"])


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("method", ["grad_cosine", "tag"])
def test_method_recovers_the_planted_partition(tmp_path: Path, method: str, seed: int) -> None:
    outcome = run_affinity(_planted(seed), [method], max_groups=3, out=tmp_path, report=False,
                           console=QUIET)
    assert outcome.true_groups is not None and len(outcome.true_groups) == 3
    assert outcome.adjusted_rand[method][3] >= 0.9, outcome.groupings[method].by_count[3]


@pytest.mark.parametrize("seed", [0, 1])
def test_recovered_groups_beat_training_all_tasks_together(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    monkeypatch.chdir(tmp_path)  # the single-task baselines cache (runs/baselines)
    base = _planted(seed)
    found = run_affinity(base, ["tag"], max_groups=3, out=tmp_path / "affinity", report=False,
                         console=QUIET)
    assert found.adjusted_rand["tag"][3] >= 0.9
    outcome = run_grouping_bench(base, tmp_path / "affinity" / "groups.json", "tag", 3,
                                 seeds=1, out=tmp_path / "bench", console=QUIET, report=False)
    delta = {m["balancer"]: m["delta_m"]["mean"] for m in outcome.leaderboard["methods"]}
    grouped, together = delta["grouped: tag (k=3)"], delta["together"]
    assert grouped > together + 1.0, delta
    assert together < 0 < grouped + 1.0, delta  # together hurts; grouped ≈ single-task or better
