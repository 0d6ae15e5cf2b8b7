"""Callback objects passed to the Trainer: every event in order with a TrainerState, the
TrainerControl flags (stop, evaluate, save), what on_step_end sees, and the sharing
architecture's schedule (Learning to Branch) run as a callback."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from polytask import MultiTaskModel, Trainer, load_config
from polytask.models.sharing.hard_sharing import HardSharing
from polytask.models.sharing.ltb import LearningToBranch
from polytask.train import checkpoint
from polytask.train.callbacks import (
    ArchitectureSchedule,
    Callback,
    StepResult,
    TrainerControl,
    TrainerState,
)
from tests.conftest import tabular_config

TASKS = ["up", "size", "flags"]


def _config(path: Path, **train: object) -> Any:
    settings: dict[str, object] = {"max_steps": 6, "eval_every": 3, "checkpoint_every": 3,
                                   "log_every": 2, **train}
    return load_config(tabular_config(path, **settings), ["balancer=uw", "sampler=all"])


class Recorder(Callback):
    """Records (event, step) for every event, and checks what each event receives."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.steps: list[StepResult] = []

    def _seen(self, event: str, state: TrainerState, control: TrainerControl) -> None:
        assert isinstance(state, TrainerState) and isinstance(control, TrainerControl)
        self.events.append((event, state.step))

    def on_train_begin(self, state: TrainerState, control: TrainerControl) -> None:
        self._seen("train_begin", state, control)

    def on_step_begin(self, state: TrainerState, control: TrainerControl) -> None:
        self._seen("step_begin", state, control)

    def on_step_end(self, state: TrainerState, control: TrainerControl,
                    step: StepResult) -> None:
        self._seen("step_end", state, control)
        self.steps.append(step)

    def on_log(self, state: TrainerState, control: TrainerControl,
               record: Mapping[str, Any]) -> None:
        self._seen(f"log/{record['split']}", state, control)

    def on_evaluate(self, state: TrainerState, control: TrainerControl,
                    metrics: Mapping[str, Mapping[str, float]]) -> None:
        assert set(metrics) == set(TASKS) and state.best["step"] is not None
        self._seen("evaluate", state, control)

    def on_save(self, state: TrainerState, control: TrainerControl, checkpoint: Path) -> None:
        assert checkpoint.name == f"step-{state.step:07d}"
        self._seen("save", state, control)

    def on_train_end(self, state: TrainerState, control: TrainerControl,
                     results: Mapping[str, Any]) -> None:
        assert results["steps"] == state.step
        self._seen("train_end", state, control)


def test_a_callback_object_receives_every_event_in_order(tmp_path: Path,
                                                         tabular_file: Path) -> None:
    recorder = Recorder()
    Trainer(_config(tabular_file), tmp_path / "run", callbacks=[recorder]).fit()
    expected: list[tuple[str, int]] = [("train_begin", 0)]
    for step in range(1, 7):
        expected += [("step_begin", step - 1), ("step_end", step)]
        if step % 2 == 0:
            expected.append(("log/train", step))
        if step % 3 == 0:
            expected += [("log/validation", step), ("evaluate", step), ("save", step)]
    expected += [("log/test", 6), ("train_end", 6)]
    assert recorder.events == expected


def test_state_holds_epochs_metrics_and_best(tmp_path: Path, tabular_file: Path) -> None:
    class Look(Callback):
        def on_train_end(self, state: TrainerState, control: TrainerControl,
                         results: Mapping[str, Any]) -> None:
            self.epoch, self.metrics, self.best = state.epoch, dict(state.metrics), state.best

    look = Look()
    Trainer(_config(tabular_file, batch_size=100), tmp_path / "run", callbacks=[look]).fit()
    assert set(look.epoch) == set(TASKS)  # 6 steps x 100 rows over one shared table
    assert all(1.0 < e < 3.0 for e in look.epoch.values())
    assert {"loss/up", "lr", "validation/score", "validation/up/accuracy",
            "test/size/mae"} <= set(look.metrics)
    assert look.best["step"] in (3, 6)


class StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state: TrainerState, control: TrainerControl,
                    step: StepResult) -> None:
        control.should_stop = state.step == self.step


def test_should_stop_ends_the_run_cleanly_at_that_step(tmp_path: Path,
                                                        tabular_file: Path) -> None:
    results = Trainer(_config(tabular_file, max_steps=50, eval_every=10, checkpoint_every=10),
                      tmp_path / "run", callbacks=[StopAt(4)]).fit()
    assert results["steps"] == 4 and results["stopped_early"]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["steps"] == 4
    folders = checkpoint.list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [f.name for f in folders] == ["step-0000004"]


def test_should_evaluate_and_should_save_act_on_that_step(tmp_path: Path,
                                                          tabular_file: Path) -> None:
    class Ask(Callback):
        def on_step_end(self, state: TrainerState, control: TrainerControl,
                        step: StepResult) -> None:
            control.should_evaluate = state.step == 2
            control.should_save = state.step == 3

    Trainer(_config(tabular_file, max_steps=8, eval_every=8, checkpoint_every=8),
            tmp_path / "run", callbacks=[Ask()]).fit()
    records = [json.loads(line) for line in
               (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "validation"] == [2, 8]
    folders = checkpoint.list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [f.name for f in folders] == ["step-0000003", "step-0000008"]


def test_on_step_end_sees_model_batch_and_balancer_result(tmp_path: Path,
                                                          tabular_file: Path) -> None:
    recorder = Recorder()
    trainer = Trainer(_config(tabular_file, max_steps=3), tmp_path / "run",
                      callbacks=[recorder])
    trainer.fit()
    step = recorder.steps[-1]
    assert step.model is trainer.model and isinstance(step.model, MultiTaskModel)
    assert set(step.batch) == set(TASKS)
    inputs, labels = step.batch["size"]
    assert labels.shape[0] == 16 and inputs["numeric"].shape[0] == 16
    assert set(step.balancer_result.weights) == set(TASKS)  # uncertainty weighting's
    assert set(step.losses) == set(TASKS) and step.output is not None
    assert step.output.features is not None  # hard sharing over one shared batch
    assert set(recorder.steps[1].logged) >= {"loss/up", "weight/up", "lr"}  # step 2 logs
    assert recorder.steps[0].logged == {}


def test_no_callbacks_means_an_empty_list(tmp_path: Path, tabular_file: Path) -> None:
    trainer = Trainer(_config(tabular_file, max_steps=2), tmp_path / "run")
    trainer.fit()
    assert trainer.callbacks == []  # hard sharing has no schedule; train.callbacks: []


def test_learning_to_branch_follows_its_schedule_as_a_callback(tmp_path: Path,
                                                               tabular_file: Path) -> None:
    assert ArchitectureSchedule.wanted(LearningToBranch(4, ["a", "b"]))
    assert not ArchitectureSchedule.wanted(HardSharing(4, ["a", "b"]))
    config = tabular_config(tabular_file, max_steps=8, eval_every=8)
    config["model"]["architecture"] = {"name": "ltb", "search_fraction": 0.5}  # type: ignore[index]
    trainer = Trainer(load_config(config, ["balancer=uw", "sampler=all"]), tmp_path / "run")
    trainer.fit()
    assert isinstance(trainer.callbacks[0], ArchitectureSchedule)
    architecture = trainer.model.architecture
    assert bool(architecture.discretized)  # fixed after 4 of 8 steps
    shared = {id(p) for p in trainer.shared_params}
    assert shared == {id(p) for p in trainer.model.shared_parameters()}  # re-read after
    assert torch.isfinite(torch.tensor(architecture.temperature))
