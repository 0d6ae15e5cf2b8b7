"""A merged model is a run directory: `polytask.load` predicts with it (heads of different
sizes kept, surgery heads rebuilt), `polytask eval` reproduces its test metrics, and
`polytask report` draws it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console
from torch import nn

import polytask
from polytask.config import RunConfig
from polytask.evaluate.report import write_report
from polytask.inference import evaluate_run
from polytask.merge.regime import MergeOutcome, run_merge

ROWS = pd.DataFrame({"a": [2.0, -2.0, 0.1], "b": [2.0, -2.0, 0.1], "c": [2.5, -2.5, 0.0],
                     "d": [0.0, 0.0, 0.0]})


@pytest.mark.parametrize("method", ["ties", "surgery"])
def test_the_merged_run_reloads_and_predicts(toy_merge: tuple[MergeOutcome, Path],
                                             method: str) -> None:
    _, out = toy_merge
    run = polytask.load(out / "merged" / method)
    predictions = run.predict(ROWS)
    assert set(predictions["up"]) <= {"yes", "no"}
    assert set(predictions["level"]) <= {"high", "middle", "low"}
    assert list(predictions["up"][:2]) == ["yes", "no"]
    head = run.model.heads["level"]
    if method == "surgery":
        assert isinstance(head, nn.Sequential)
        head = head[1]
    assert head.out_features == 3 and run.model.heads["up"].__class__ is type(
        run.model.heads["up"])


@pytest.mark.parametrize("method", ["task_arithmetic", "surgery"])
def test_eval_reproduces_the_recorded_test_metrics(toy_merge: tuple[MergeOutcome, Path],
                                                   method: str) -> None:
    _, out = toy_merge
    directory = out / "merged" / method
    recorded = json.loads((directory / "results.json").read_text())
    metrics = evaluate_run(directory)
    for task, entry in recorded["tasks"].items():
        assert metrics[task][entry["metric"]] == pytest.approx(entry["value"])
    meta = json.loads((directory / "model" / "meta.json").read_text())
    assert meta["merge"]["method"] == method and meta["merge"]["chosen_on"] == "validation"


def test_report_works_on_a_merged_run_and_on_the_merge_folder(
        toy_merge: tuple[MergeOutcome, Path]) -> None:
    _, out = toy_merge
    assert write_report(out / "merged" / "ties").exists()
    page = write_report(out).read_text()
    assert "Merge leaderboard" in page or "Leaderboard" in page
    assert 'id="merge_sweep"' in page and 'id="task_vector_cosine"' in page


def test_a_per_task_zipit_merge_is_one_run_directory_per_task(
        toy_config: RunConfig, toy_files: dict[str, Path]) -> None:
    out = toy_files["folder"] / "merge-zipit"
    outcome = run_merge(toy_config, ["zipit"], out, console=Console(quiet=True),
                        references=False, options={"zipit": {"beta": 0.125}})
    row = next(r for r in outcome.results["rows"] if r["name"] == "zipit")
    assert row["run_dir"] == str(Path("merged") / "zipit")
    assert "one run directory per task (backbone layers kept per task)" in row["notes"]
    for task, labels in (("up", {"yes", "no"}), ("level", {"high", "middle", "low"})):
        directory = out / "merged" / "zipit" / task
        run = polytask.load(directory)
        assert list(run.model.heads) == [task]
        assert set(run.predict(ROWS)[task]) <= labels
        recorded = json.loads((directory / "results.json").read_text())
        assert list(recorded["tasks"]) == [task] and recorded["merge"]["method"] == "zipit"
        entry = recorded["tasks"][task]
        assert entry["value"] == pytest.approx(row["tasks"][task])
        metrics = evaluate_run(directory)
        assert metrics[task][entry["metric"]] == pytest.approx(entry["value"])
