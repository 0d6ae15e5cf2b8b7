"""Data-map affinity (STG-MTL): confidence and variability, the recorded gold-label
probabilities, the affinity of identical tasks, caching and resuming, refusals."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from polytask.affinity import data_map as data_map_module
from polytask.affinity import get
from polytask.affinity.data_map import (
    GoldProbabilities,
    data_map,
    fuzzy_memberships,
    map_affinity,
    records_of,
    running_data_map,
)
from polytask.config import RunConfig
from polytask.errors import ConfigError, TrainingError
from polytask.train.callbacks import StepResult, TrainerControl, TrainerState
from polytask.train.trainer import Trainer

INPUTS = ["a", "b", "c"]


def _config(kinds: dict[str, str] | None = None, **train: Any) -> RunConfig:
    """p and its exact copy p2, and an unrelated q, on one in-memory table (96 train rows:
    an epoch is 6 steps of 16)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3))
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2]})
    frame["p"] = np.where(x[:, 0] > 0, "y", "n")
    frame["p2"] = frame["p"]
    frame["q"] = np.where(x[:, 1] * x[:, 2] > 0, "y", "n")
    frame["r"] = x[:, 2]
    kinds = kinds or {"p": "classification", "p2": "classification", "q": "classification"}
    return RunConfig.model_validate({
        "data": frame,
        "tasks": [{"name": t, "kind": k, "input": INPUTS, "label": t} for t, k in kinds.items()],
        "model": {"backbone": {"type": "mlp", "hidden": [8]}},
        "train": {"max_steps": 24, "batch_size": 16, "eval_every": 10, "lr": 0.01,
                  "progress": False, "callbacks": [], **train},
    })


def _console() -> Console:
    return Console(file=io.StringIO(), width=200)


def test_confidence_and_variability_are_the_mean_and_std_over_records() -> None:
    probabilities = np.array([[0.2, 1.0], [0.4, 1.0], [0.9, 1.0]])  # 3 records x 2 rows
    confidence, variability = data_map(probabilities)
    np.testing.assert_allclose(confidence, [0.5, 1.0])
    # population std of (0.2, 0.4, 0.9): deviations -0.3, -0.1, 0.4
    np.testing.assert_allclose(variability, [math.sqrt((0.09 + 0.01 + 0.16) / 3), 0.0])
    running = running_data_map(probabilities)  # the map after each record, as STG-MTL stacks
    np.testing.assert_allclose(running[0], [[0.2, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(running[1], [[0.3, 0.1], [1.0, 0.0]])


def test_identical_tasks_get_the_highest_affinity_and_a_second_call_trains_nothing(
        tmp_path: Path) -> None:
    config = _config()
    matrix = get("data_map", clusters=2).measure(config, tmp_path, _console())
    assert matrix.details["representation"] == "points"  # one shared table
    assert matrix.details["records"] == {"p": 4, "p2": 4, "q": 4}  # 24 steps, 6 per epoch
    assert matrix.details["runs_trained"] == 1  # one joint run records every task
    values = matrix.array()
    p, p2, q = (matrix.tasks.index(t) for t in ("p", "p2", "q"))
    assert values[p, p2] > max(values[p, q], values[p2, q])
    np.testing.assert_array_equal(values, values.T)
    assert sorted(map(sorted, matrix.details["clustering"]["groups"])) == [["p", "p2"], ["q"]]
    again = get("data_map", clusters=2).measure(config, tmp_path, _console())
    assert (again.details["runs_trained"], again.details["runs_reused"]) == (0, 1)
    np.testing.assert_array_equal(again.array(), values)


def test_the_histogram_representation_ranks_identical_tasks_first(tmp_path: Path) -> None:
    matrix = get("data_map", run="single", representation="histogram").measure(
        _config(), tmp_path, _console())
    assert matrix.details["runs_trained"] == 3
    values = matrix.array()
    p, p2 = matrix.tasks.index("p"), matrix.tasks.index("p2")
    assert values[p, p2] == np.nanmax(values)  # alone, p and p2 train identically


def test_the_records_are_the_gold_label_probabilities_of_the_training_rows(
        tmp_path: Path) -> None:
    config = _config(max_steps=6)  # one epoch: recorded once, after the last step
    recorder = GoldProbabilities(["p", "q"], every=None)
    trainer = Trainer(config, tmp_path / "run", callbacks=[recorder])
    recorder.bind(trainer)
    trainer.fit()
    assert [path.stem for path in records_of(tmp_path / "run", "p")] == ["000000006"]
    recorded = np.load(records_of(tmp_path / "run", "q")[0])
    final = trainer.model  # the best checkpoint is step 6 (the only evaluation)
    split = trainer.data.splits[trainer.data.task_source["q"]]["train"]
    logits = final({"q": split.inputs})["q"].detach()
    gold = split.labels["q"]
    expected = logits.softmax(-1)[np.arange(len(gold)), gold].double().numpy()
    np.testing.assert_allclose(recorded, expected, rtol=1e-6)


def test_an_interrupted_run_resumes_to_the_same_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config()
    get("data_map", every=3).measure(config, tmp_path / "clean", _console())

    class Crashing(GoldProbabilities):
        def on_step_end(self, state: TrainerState, control: TrainerControl,
                        step: StepResult) -> None:
            super().on_step_end(state, control, step)
            if state.step == 12:  # records at 3..12; the checkpoint is at step 10
                raise RuntimeError("interrupted")

    monkeypatch.setattr(data_map_module, "GoldProbabilities", Crashing)
    with pytest.raises(RuntimeError, match="interrupted"):
        get("data_map", every=3).measure(config, tmp_path / "work", _console())
    monkeypatch.setattr(data_map_module, "GoldProbabilities", GoldProbabilities)
    resumed = get("data_map", every=3).measure(config, tmp_path / "work", _console())
    clean_runs = sorted((tmp_path / "clean" / "data_map").iterdir())
    work_runs = sorted((tmp_path / "work" / "data_map").iterdir())
    for task in ("p", "p2", "q"):
        clean, work = records_of(clean_runs[0], task), records_of(work_runs[0], task)
        assert [r.name for r in work] == [r.name for r in clean]  # 3, 6, ..., 24
        for a, b in zip(clean, work, strict=True):
            np.testing.assert_array_equal(np.load(a), np.load(b))
    assert resumed.details["records"]["p"] == 8


def test_a_task_that_is_not_a_classification_is_named_in_the_error(tmp_path: Path) -> None:
    config = _config({"p": "classification", "q": "classification", "r": "regression"})
    with pytest.raises(ConfigError, match=r"'r' \(kind regression\).*only: \['p', 'q'\]"):
        get("data_map").measure(config, tmp_path, _console())


def test_too_few_records_for_a_variability_is_explained(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"recorded task 'p' 1 time.*at least 2 records"):
        get("data_map", steps=6).measure(_config(), tmp_path, _console())


def test_the_affinity_is_centred_and_the_fuzzy_membership_follows_the_distances() -> None:
    vectors = np.array([[0.0, 0.0], [0.0, 0.1], [1.0, 1.0]])
    affinity = map_affinity(vectors)
    assert np.nansum(np.triu(affinity, 1)) == pytest.approx(0.0)  # centred on the mean pair
    assert affinity[0, 1] == np.nanmax(affinity)
    membership, hard = fuzzy_memberships(vectors, clusters=2, fuzziness=2.0, seed=0)
    np.testing.assert_allclose(membership.sum(axis=1), 1.0)
    assert hard[0] == hard[1] != hard[2]
