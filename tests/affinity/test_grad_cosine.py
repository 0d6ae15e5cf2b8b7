"""`grad_cosine`: cosines from the engine's Gramian equal those of per-task autograd
gradients; the run reuses the balancer's Gramian when it has one; planted blocks show."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from polytask.affinity import best_partitions, get
from polytask.affinity._probe import TaskLosses
from polytask.affinity.grad_cosine import cosine_matrix, shared_gramian
from polytask.errors import ConfigError
from tests.affinity.tiny_tables import trained, two_block_config

QUIET = Console(stderr=True, quiet=True)


def test_cosines_equal_those_of_per_task_autograd_gradients(tmp_path: Path) -> None:
    trainer = trained(two_block_config(steps=5), tmp_path / "run")
    model = trainer.model
    losses_of = TaskLosses(model, trainer.data.kinds, trainer.task_names, trainer.device)
    inputs = losses_of.inputs(trainer.stream.next_batch(trainer.task_names))
    shared = model.shared_parameters()
    losses = losses_of(*inputs)
    found = cosine_matrix(shared_gramian(losses, shared))
    rows = [torch.cat([g.flatten() for g in torch.autograd.grad(loss, shared,
                                                                retain_graph=True)])
            for loss in losses]
    by_hand = np.array([[float(torch.nn.functional.cosine_similarity(a, b, dim=0))
                         for b in rows] for a in rows])
    np.testing.assert_allclose(found, by_hand, atol=1e-5)


def test_the_matrix_is_the_mean_of_the_cosines_the_balancer_logged(tmp_path: Path) -> None:
    """With a Gramian balancer (upgrad) the run reuses the engine's Gramian, which the
    trainer also logs as cosine/<a>/<b>: the matrix is their mean over the logging steps."""
    config = two_block_config(steps=12, balancer="upgrad")
    matrix = get("grad_cosine", every=3).measure(config, tmp_path, QUIET)
    assert matrix.details["measured_steps"] == 4
    assert matrix.details["steps_reusing_balancer_gramian"] == 4
    records = [json.loads(line) for line in
               (tmp_path / "grad_cosine-run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if r.get("split") == "train" and "cosine/t0/t1" in r]
    assert [r["step"] for r in logged] == [3, 6, 9, 12]
    for i, a in enumerate(matrix.tasks):
        for j, b in enumerate(matrix.tasks):
            if i < j:
                mean = np.mean([r[f"cosine/{a}/{b}"] for r in logged])
                assert matrix.values[i][j] == pytest.approx(mean, abs=1e-5)
                assert matrix.values[j][i] == matrix.values[i][j]
    assert all(np.isnan(matrix.values[i][i]) for i in range(4)) and matrix.symmetric


def test_planted_blocks_come_out_as_the_best_two_groups(tmp_path: Path) -> None:
    matrix = get("grad_cosine").measure(two_block_config(steps=30), tmp_path, QUIET)
    assert matrix.details["steps_reusing_balancer_gramian"] == 0  # ew: recomputed
    groups = best_partitions(matrix, max_groups=2).by_count[2].groups
    assert sorted(groups) == [["t0", "t1"], ["t2", "t3"]]


def test_a_one_task_per_step_sampler_is_replaced_by_all_with_a_note(tmp_path: Path) -> None:
    console = Console(record=True, width=200)
    matrix = get("grad_cosine", steps=4, every=2).measure(
        two_block_config(sampler="round_robin"), tmp_path, console)
    assert matrix.details["sampler"] == "all" and matrix.details["measured_steps"] == 2
    assert "sampler 'round_robin' feeds one task per step" in console.export_text()


def test_bad_options_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="option every must be positive, got 0"):
        get("grad_cosine", every=0)
    with pytest.raises(ConfigError, match="every=10 is more than the run's 4 steps"):
        get("grad_cosine", steps=4, every=10).measure(two_block_config(), tmp_path, QUIET)
