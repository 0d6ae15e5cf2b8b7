"""`nan_policy: stop` checks the losses without a host sync per step, yet still stops at the
first NaN step before any checkpoint or evaluation sees NaN weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from polytask import Trainer, load_config
from polytask.errors import TrainingError
from polytask.train import checkpoint
from tests.conftest import poison_size_loss, tabular_config


def _config(path: Path, **overrides: object):
    settings = {"max_steps": 24, "eval_every": 12, "checkpoint_every": 8, "log_every": 4,
                **overrides}
    return load_config(tabular_config(path, **settings), ["balancer=ew", "sampler=all"])


def _count_syncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The steps at which the losses were checked with a host sync."""
    steps: list[int] = []
    original = Trainer._nonfinite_tasks

    def nonfinite_tasks(self: Trainer, losses, world: bool):
        steps.append(self.step)
        return original(self, losses, world)

    monkeypatch.setattr(Trainer, "_nonfinite_tasks", nonfinite_tasks)
    original_raise = Trainer._raise_if_nonfinite

    def raise_if_nonfinite(self: Trainer, world: bool = True) -> None:
        if self._unchecked:
            steps.append(self.step)
        original_raise(self, world)

    monkeypatch.setattr(Trainer, "_raise_if_nonfinite", raise_if_nonfinite)
    return steps


def test_stop_policy_checks_only_on_logging_evaluation_and_checkpoint_steps(
        tmp_path: Path, tabular_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checked = _count_syncs(monkeypatch)
    Trainer(_config(tabular_file), tmp_path / "run").fit()
    # within steps 4, 8, ... (the logging steps), before `Trainer.step` counts them
    assert sorted(set(checked)) == [step - 1 for step in (4, 8, 12, 16, 20, 24)]


def test_skip_policy_checks_every_step(tmp_path: Path, tabular_file: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    checked = _count_syncs(monkeypatch)
    Trainer(_config(tabular_file, nan_policy="skip"), tmp_path / "run").fit()
    assert sorted(set(checked)) == list(range(24))


def test_stop_policy_names_the_first_nan_step_and_keeps_no_nan_checkpoint(
        tmp_path: Path, tabular_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poison_size_loss(monkeypatch, at_step=9)  # step 10; found on logging step 12, before
    # its checkpoint
    with pytest.raises(TrainingError, match=r"step 10: the loss of task\(s\) \['size'\]"):
        Trainer(_config(tabular_file, log_every=100), tmp_path / "run").fit()
    kept = checkpoint.list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in kept] == [f"{checkpoint.PREFIX}{8:07d}"]
    assert not (tmp_path / "run" / "best").exists()  # no evaluation saw the NaN weights


def test_a_crash_after_an_unchecked_nan_reports_the_nan(
        tmp_path: Path, tabular_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poison_size_loss(monkeypatch, at_step=1)
    original = Trainer._apply_update

    def apply_update(self: Trainer, batch, logged) -> None:
        if self.step == 2:
            raise ValueError("solver failed on NaN gradients")
        original(self, batch, logged)

    monkeypatch.setattr(Trainer, "_apply_update", apply_update)
    with pytest.raises(TrainingError, match=r"step 2: the loss of task\(s\) \['size'\]"):
        Trainer(_config(tabular_file), tmp_path / "run").fit()
