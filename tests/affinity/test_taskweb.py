"""TaskWeb pairwise transfer (cached, resumable, sequential from the source's backbone) and
the TaskShop estimate."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from rich.console import Console

from polytask.affinity import AffinityMatrix, get
from polytask.affinity import taskweb as taskweb_module
from polytask.affinity.taskweb import start_from_source, taskshop_scores, transfer_change
from polytask.config import RunConfig
from polytask.errors import ConfigError
from polytask.train.baselines import single_task_config
from polytask.train.callbacks import Callback, TrainerControl, TrainerState
from polytask.train.checkpoint import load_weights_file
from polytask.train.trainer import Trainer

INPUTS = ["a", "b", "c"]


def _config(tasks: tuple[str, ...] = ("p", "q", "r"), **train: Any) -> RunConfig:
    """Two classification tasks and a regression task on one small in-memory table."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3))
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2]})
    frame["p"] = np.where(x[:, 0] > 0, "y", "n")
    frame["q"] = np.where(x[:, 0] + 0.3 * x[:, 1] > 0, "y", "n")
    frame["r"] = 2 * x[:, 2]
    kinds = {"p": "classification", "q": "classification", "r": "regression"}
    return RunConfig.model_validate({
        "data": frame,
        "tasks": [{"name": t, "kind": kinds[t], "input": INPUTS, "label": t} for t in tasks],
        "model": {"backbone": {"type": "mlp", "hidden": [8]}},
        "train": {"max_steps": 4, "batch_size": 16, "eval_every": 2, "lr": 0.01,
                  "progress": False, "callbacks": [], **train},
    })


def _console() -> Console:
    return Console(file=io.StringIO(), width=200)


def _text(console: Console) -> str:
    file = console.file
    assert isinstance(file, io.StringIO)
    return file.getvalue()


def test_pair_runs_are_cached_and_a_second_call_trains_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(("p", "r"))
    first = get("taskweb", mode="joint").measure(config, tmp_path, _console())
    assert first.details["runs_trained"] == 3  # 2 alone + 1 pair (it serves both directions)
    assert first.details["runs_reused"] == 0
    assert math.isfinite(first.values[0][1]) and math.isfinite(first.values[1][0])

    def no_training(self: Trainer) -> dict[str, Any]:
        raise AssertionError("a cached run was trained again")

    monkeypatch.setattr(Trainer, "fit", no_training)
    console = _console()
    again = get("taskweb", mode="joint").measure(config, tmp_path, console)
    assert again.details["runs_trained"] == 0
    assert again.details["runs_reused"] == 3
    np.testing.assert_array_equal(again.array(), first.array())
    assert "taskweb p -> r (joint, cached)" in _text(console)


class _CrashAfterFirstCheckpoint(Callback):
    def on_save(self, state: TrainerState, control: TrainerControl, checkpoint: Path) -> None:
        raise RuntimeError("interrupted")


def test_an_interrupted_pair_run_resumes_to_the_same_matrix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(("p", "q"))
    clean = get("taskweb", mode="joint").measure(config, tmp_path / "clean", _console())

    class Interrupted(Trainer):
        def __init__(self, *args: Any, **options: Any) -> None:
            if "-with-" in str(args[1]):  # the pair run, not the alone runs
                options["callbacks"] = [_CrashAfterFirstCheckpoint()]
            super().__init__(*args, **options)

    monkeypatch.setattr(taskweb_module, "Trainer", Interrupted)
    with pytest.raises(RuntimeError, match="interrupted"):
        get("taskweb", mode="joint").measure(config, tmp_path / "work", _console())
    monkeypatch.setattr(taskweb_module, "Trainer", Trainer)
    console = _console()
    resumed = get("taskweb", mode="joint").measure(config, tmp_path / "work", console)
    assert "resumed from step 2" in _text(console)
    assert resumed.details["runs_reused"] == 2  # the alone runs had finished
    np.testing.assert_array_equal(resumed.array(), clean.array())


def _backbone(path: Path) -> dict[str, torch.Tensor]:
    weights = load_weights_file(path / "model" / "model.safetensors")
    return {k: v for k, v in weights.items() if k.startswith("backbone.")}


def test_sequential_mode_starts_the_target_from_the_source_backbone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: dict[str, dict[str, torch.Tensor]] = {}

    class Recording(Trainer):
        def _setup(self) -> None:  # the backbone each run really trains from
            super()._setup()
            started[self.run_dir.name] = {f"backbone.{k}": v.clone()
                                          for k, v in self.model.backbone.state_dict().items()}

    monkeypatch.setattr(taskweb_module, "Trainer", Recording)
    matrix = get("taskweb").measure(_config(("p", "q")), tmp_path, _console())
    assert matrix.details["mode"] == "sequential"
    runs = Path(matrix.details["runs_dir"])
    source = _backbone(next(runs.glob("p-[0-9a-f]*")))  # p's alone run, finished
    target_from_source = started[next(runs.glob("p-then-q-*")).name]
    target_alone = started[next(runs.glob("q-[0-9a-f]*")).name]
    torch.testing.assert_close(target_from_source, source, rtol=0, atol=0)
    assert any(not torch.equal(v, target_alone[k]) for k, v in target_from_source.items())


def test_the_starting_model_has_the_source_backbone_and_the_alone_runs_heads(
        tmp_path: Path) -> None:
    config = _config(("p", "q"))
    Trainer(single_task_config(config, "p"), tmp_path / "p", compare_config=False).fit()
    model = start_from_source(single_task_config(config, "q"), tmp_path / "p")
    source = _backbone(tmp_path / "p")
    for name, value in model.state_dict().items():
        if name.startswith("backbone."):
            torch.testing.assert_close(value, source[name])
    fresh = Trainer(single_task_config(config, "q"), tmp_path / "q", compare_config=False)
    fresh._setup()  # the model q's alone run starts from
    torch.testing.assert_close(model.heads["q"].state_dict(),
                               fresh.model.heads["q"].state_dict())


def _results(task: str, value: float, metric: str, higher_is_better: bool) -> dict[str, Any]:
    return {"tasks": {task: {"metric": metric, "higher_is_better": higher_is_better}},
            "validation": {task: {metric: value}}}


@pytest.mark.parametrize(("value", "alone", "metric", "higher", "expected"), [
    (0.88, 0.80, "accuracy", True, 10.0),    # higher accuracy: helps
    (0.72, 0.80, "accuracy", True, -10.0),
    (0.9, 1.0, "mae", False, 10.0),          # lower error: helps (sign flipped)
    (1.1, 1.0, "mae", False, -10.0),
])
def test_the_relative_change_is_positive_when_the_source_helps(
        value: float, alone: float, metric: str, higher: bool, expected: float) -> None:
    change = transfer_change(_results("t", value, metric, higher),
                             _results("t", alone, metric, higher), "t")
    assert change == pytest.approx(expected)


def test_an_alone_value_of_zero_gives_an_undefined_change() -> None:
    assert math.isnan(transfer_change(_results("t", 0.2, "mcc", True),
                                      _results("t", 0.0, "mcc", True), "t"))


def _matrix(values: list[list[float]]) -> AffinityMatrix:
    return AffinityMatrix(method="taskweb", tasks=["a", "b", "c", "t"], values=values,
                          definition="hand-made")


def test_taskshop_combines_the_direct_score_with_paths_through_pivots() -> None:
    nan = math.nan
    matrix = _matrix([
        # to:  a     b     c     t
        [nan, 4.0, 2.0, 1.0],   # from a
        [0.0, nan, 6.0, 3.0],   # from b
        [8.0, -2.0, nan, nan],  # from c (c -> t not measured)
        [0.0, 0.0, 0.0, nan],   # from t
    ])
    scores = dict(taskshop_scores(matrix, "t"))
    # a: pivots b ((4 + 3) / 2 = 3.5) and c (c -> t is NaN: left out); direct 1
    assert scores["a"] == pytest.approx(0.7 * 3.5 + 0.3 * 1.0)
    # b: pivot a ((0 + 1) / 2), pivot c left out; direct 3
    assert scores["b"] == pytest.approx(0.7 * 0.5 + 0.3 * 3.0)
    # c: no direct score, so the pivot mean alone: a ((8 + 1) / 2), b ((-2 + 3) / 2)
    assert scores["c"] == pytest.approx((4.5 + 0.5) / 2)
    assert [s for s, _ in taskshop_scores(matrix, "t")] == ["a", "c", "b"]
    assert taskshop_scores(matrix, "t", pivot_weight=0.0)[0] == ("b", 3.0)


def test_taskshop_names_the_tasks_when_the_target_is_unknown() -> None:
    matrix = _matrix([[math.nan] * 4 for _ in range(4)])
    with pytest.raises(ConfigError, match=r"'x' is not a task.*a, b, c, t"):
        taskshop_scores(matrix, "x")


def test_a_bad_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="mode 'both' is not sequential or joint"):
        get("taskweb", mode="both")
