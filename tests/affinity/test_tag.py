"""`tag`: the batched (vmap) lookahead equals T model copies stepped by hand, the loop
fallback agrees and is used when vmap cannot run the model, planted blocks show."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import Tensor, nn

from polytask.affinity import best_partitions, get
from polytask.affinity._probe import TaskLosses, shared_parameter_names
from polytask.affinity.tag import lookahead_affinity, lookahead_losses, lookahead_parameters
from polytask.balance.jacobian import task_jacobian
from polytask.errors import ConfigError
from polytask.train.trainer import Trainer
from tests.affinity.tiny_tables import INPUTS, trained, two_block_config, two_block_table

QUIET = Console(stderr=True, quiet=True)
LR = 0.05


def fixed_model(tmp_path: Path, **options: object) -> tuple[Trainer, TaskLosses, tuple]:
    trainer = trained(two_block_config(steps=5), tmp_path / "run", **options)
    trainer.model.eval()
    losses_of = TaskLosses(trainer.model, trainer.data.kinds, trainer.task_names,
                           trainer.device)
    return trainer, losses_of, losses_of.inputs(trainer.stream.next_batch(trainer.task_names))


def copies_stepped_by_hand(losses_of: TaskLosses, inputs: tuple) -> Tensor:
    """after[i, j]: L_j of a deep copy of the model whose shared parameters took an SGD step
    on task i's own autograd gradient."""
    model = losses_of.model
    shared = model.shared_parameters()
    losses = losses_of(*inputs)
    rows = []
    for i in range(len(losses_of.tasks)):
        grads = torch.autograd.grad(losses[i], shared, retain_graph=True, allow_unused=True)
        twin = copy.deepcopy(model)
        twin_shared = {id(p): q for p, q in zip(model.parameters(), twin.parameters(),
                                                strict=True)}
        with torch.no_grad():
            for param, grad in zip(shared, grads, strict=True):
                if grad is not None:
                    twin_shared[id(param)].sub_(LR * grad)
            twin_losses = TaskLosses(twin, losses_of.kinds, losses_of.tasks, losses_of.device)
            rows.append(twin_losses(*inputs))
    return torch.stack(rows)


def test_the_batched_lookahead_equals_stepping_t_model_copies(tmp_path: Path) -> None:
    _, losses_of, inputs = fixed_model(tmp_path)
    named = shared_parameter_names(losses_of.model)
    losses = losses_of(*inputs)
    stacked = lookahead_parameters(named, task_jacobian(losses, [p for _, p in named]), LR)
    with torch.no_grad():
        batched, used_vmap = lookahead_losses(losses_of, *inputs, stacked)
        looped, looped_vmap = lookahead_losses(losses_of, *inputs, stacked, batched=False)
    by_hand = copies_stepped_by_hand(losses_of, inputs)
    assert used_vmap and not looped_vmap
    torch.testing.assert_close(batched, by_hand, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(looped, by_hand, atol=1e-6, rtol=1e-6)
    affinity, _ = lookahead_affinity(losses_of, *inputs, LR)
    before = losses.detach().double()
    np.testing.assert_allclose(affinity, (1 - by_hand.double() / before).numpy(), atol=1e-6)


class BranchyTrunk(nn.Module):
    """A backbone whose forward reads a parameter's value into Python, which vmap refuses."""

    feature_dim = 8

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(len(INPUTS), 8)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        hidden = self.layer(inputs["numeric"])
        return torch.relu(hidden) if float(self.layer.weight.detach().sum()) > -1e9 else hidden


def test_a_model_vmap_cannot_run_falls_back_to_the_loop_with_a_debug_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, losses_of, inputs = fixed_model(tmp_path, model=BranchyTrunk())
    with caplog.at_level(logging.DEBUG, logger="polytask.affinity.tag"):
        affinity, used_vmap = lookahead_affinity(losses_of, *inputs, LR)
    assert not used_vmap
    assert "vmap cannot run this model" in caplog.text
    np.testing.assert_allclose(
        affinity, 1 - (copies_stepped_by_hand(losses_of, inputs).double()
                       / losses_of(*inputs).detach().double()).numpy(), atol=1e-6)


def test_planted_blocks_come_out_as_the_best_two_groups(tmp_path: Path) -> None:
    matrix = get("tag", every=1).measure(two_block_config(steps=30), tmp_path, QUIET)
    assert matrix.details["lookahead"] == "vmap" and matrix.details["measured_steps"] == 30
    assert not matrix.symmetric and all(np.isnan(matrix.values[i][i]) for i in range(4))
    groups = best_partitions(matrix, max_groups=2).by_count[2].groups
    assert sorted(groups) == [["t0", "t1"], ["t2", "t3"]]


def test_a_fixed_lookahead_lr_scales_the_affinity_and_is_recorded(tmp_path: Path) -> None:
    small = get("tag", steps=4, every=2, lr=0.001).measure(two_block_config(), tmp_path, QUIET)
    large = get("tag", steps=4, every=2, lr=0.01).measure(two_block_config(), tmp_path, QUIET)
    assert small.details["lookahead_lr"] == 0.001
    ratio = np.nanmean(np.abs(large.values)) / np.nanmean(np.abs(small.values))
    assert 5 < ratio < 15  # first order in lr


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="option lr must be positive"):
        get("tag", lr=-1.0)
    with pytest.raises(ConfigError, match="option steps must be positive"):
        get("tag", steps=0)


def test_the_table_blocks_are_what_the_sanity_checks_assume() -> None:
    frame = two_block_table()
    correlation = frame[["t0", "t1", "t2", "t3"]].corr().to_numpy()
    assert correlation[0, 1] == pytest.approx(1.0) and abs(correlation[0, 2]) < 0.2
