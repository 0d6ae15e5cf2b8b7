"""`polytask eval` scores the rows the run was trained and tested on: relative data paths
are read against the config's folder, and changed data is refused unless allowed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from polytask.cli import app
from polytask.errors import DataError
from polytask.inference import evaluate_run
from tests.conftest import tabular_config

runner = CliRunner()


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """File loading goes through `datasets`; keep its Arrow cache out of the home folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


@pytest.fixture
def trained(tmp_path: Path, tabular_file: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run trained from `project/run.yaml`, whose data path is relative to that folder,
    launched from another folder."""
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    shutil.copy(tabular_file, project / "data" / "shared.csv")
    config = tabular_config(Path("data/shared.csv"), max_steps=6, eval_every=3)
    (project / "run.yaml").write_text(yaml.safe_dump(config))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = runner.invoke(app, ["train", str(project / "run.yaml"), "--run-dir",
                                 str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    return tmp_path / "run"


def _data_file(run: Path) -> Path:
    return run.parent / "project" / "data" / "shared.csv"


def test_relative_data_paths_are_read_against_the_config_folder(
        trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = yaml.safe_load((trained / "config.yaml").read_text())
    assert saved["data"]["path"] == str(_data_file(trained))
    splits = json.loads((trained / "splits.json").read_text())["sources"]["shared"]
    assert list(splits["files"]) == [str(_data_file(trained))]
    assert len(splits["carved_rows"]["test"]) == splits["rows"]["test"]
    monkeypatch.chdir(trained)  # eval works from any folder
    evaluated = runner.invoke(app, ["eval", str(trained)])
    assert evaluated.exit_code == 0, evaluated.output


def test_eval_of_unchanged_data_scores_the_runs_test_rows(trained: Path) -> None:
    results = json.loads((trained / "results.json").read_text())
    metrics = evaluate_run(trained)
    assert {t: m["metrics"] for t, m in results["tasks"].items()} == metrics


def test_eval_refuses_changed_data_unless_allowed(trained: Path) -> None:
    path = _data_file(trained)
    frame = pd.read_csv(path)
    pd.concat([frame, frame.iloc[:20]]).to_csv(path, index=False)  # 20 rows more
    refused = runner.invoke(app, ["eval", str(trained)])
    assert refused.exit_code == 2, refused.output
    message = " ".join(refused.output.split())
    assert f"file {path}: sha256" in message and "--allow-data-change" in message
    with pytest.raises(DataError, match="changed since it was trained"):
        evaluate_run(trained)

    allowed = runner.invoke(app, ["eval", str(trained), "--allow-data-change"])
    assert allowed.exit_code == 0, allowed.output
    shown = " ".join(allowed.output.split())
    assert f"file {path}: sha256" in shown and shown.count("warning") == 1
    assert "rows {'train': 320, 'test': 40, 'validation': 40} -> {'train': 340," in shown
    assert "accuracy" in shown

    frame.iloc[:-20].to_csv(path, index=False)  # recorded test rows are gone
    gone = runner.invoke(app, ["eval", str(trained), "--allow-data-change"])
    assert gone.exit_code == 2 and "do not fit" in gone.output


def test_a_run_without_fingerprints_is_checked_only_when_allowed(trained: Path) -> None:
    path = trained / "splits.json"
    record = json.loads(path.read_text())
    shared = record["sources"]["shared"]
    record["sources"]["shared"] = {"rows": shared["rows"], "carved": shared["carved"],
                                   "carved_with_seed": 0}  # as older versions wrote it
    path.write_text(json.dumps(record))
    with pytest.raises(DataError, match="no data fingerprint recorded"):
        evaluate_run(trained)
    results = json.loads((trained / "results.json").read_text())
    metrics = evaluate_run(trained, allow_data_change=True)
    assert {t: m["metrics"] for t, m in results["tasks"].items()} == metrics
