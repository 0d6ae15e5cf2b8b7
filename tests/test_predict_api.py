"""Loading a finished run in Python (`polytask.load`) and predicting with it, from Python and
from `polytask predict`: several tasks at once, class probabilities, an id column."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import polytask
from polytask.cli import app
from polytask.config import load_config
from polytask.errors import ConfigError, DataError
from polytask.inference import LoadedRun, load_run
from polytask.tasks.kinds import TASK_KINDS
from polytask.tasks.spec import Task
from polytask.train.trainer import Trainer
from tests.conftest import tabular_config

runner = CliRunner()
ROWS = [{"a": 2.0, "b": 1.0, "c": 0.0, "colour": "red"},
        {"a": -2.0, "b": -1.0, "c": 0.5, "colour": "purple"},
        {"a": 0.3, "b": 2.0, "c": -1.0, "colour": "blue"}]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tabular_file: Path) -> Path:
    """A finished tabular run with a classification, a regression and a multilabel task."""
    folder = tmp_path_factory.mktemp("predict") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("POLYTASK_CACHE", str(folder.parent / "cache"))
        Trainer(load_config(tabular_config(tabular_file, max_steps=30, eval_every=30)),
                folder).fit()
    return folder


@pytest.fixture(scope="module")
def loaded(run_dir: Path) -> LoadedRun:
    return polytask.load(run_dir)


def test_load_is_the_public_name_and_load_run_still_works(run_dir: Path,
                                                         loaded: LoadedRun) -> None:
    assert "load" in polytask.__all__
    assert load_run(run_dir).predict(ROWS).equals(loaded.predict(ROWS))


def test_predict_takes_a_frame_dict_rows_or_columns_and_gives_every_task(
        loaded: LoadedRun) -> None:
    frame = pd.DataFrame(ROWS, index=[10, 11, 12])
    by_frame = loaded.predict(frame)
    assert list(by_frame.columns) == ["up", "size", "flags"]
    assert list(by_frame.index) == [10, 11, 12]
    by_rows = loaded.predict(ROWS)
    by_columns = loaded.predict({column: [row[column] for row in ROWS] for column in ROWS[0]})
    assert by_rows.equals(by_columns)
    assert by_rows.reset_index(drop=True).equals(by_frame.reset_index(drop=True))
    assert set(by_rows["up"]) <= {"yes", "no"}
    assert all(isinstance(value, float) for value in by_rows["size"])
    assert all(set(flags) <= {"p", "q"} for flags in by_rows["flags"])


def test_predict_some_tasks(loaded: LoadedRun) -> None:
    assert list(loaded.predict(ROWS, tasks="up").columns) == ["up"]
    assert list(loaded.predict(ROWS, tasks=["flags", "up"]).columns) == ["flags", "up"]
    assert list(loaded.predict(ROWS, tasks="all").columns) == ["up", "size", "flags"]
    together = loaded.predict(ROWS, proba=True)  # one encoding and pass for all tasks
    for task in together.columns:
        assert together[task].tolist() == loaded.predict(ROWS, tasks=task, proba=True)[
            task].tolist()


def test_probabilities_agree_with_the_predicted_labels(loaded: LoadedRun) -> None:
    labels = loaded.predict(ROWS)
    probabilities = loaded.predict(ROWS, proba=True)
    for row, label in zip(probabilities["up"], labels["up"], strict=True):
        assert set(row) == {"no", "yes"} and sum(row.values()) == pytest.approx(1.0)
        assert max(row, key=row.get) == label
    for row, flags in zip(probabilities["flags"], labels["flags"], strict=True):
        assert set(row) == {"p", "q"} and all(0.0 <= p <= 1.0 for p in row.values())
        assert sorted(name for name, p in row.items() if p > 0.5) == flags
    assert probabilities["size"].tolist() == labels["size"].tolist()  # no classes: the value


def test_token_probabilities_are_per_word() -> None:
    kind = TASK_KINDS.get("token_classification")(
        Task(name="ner", kind="token_classification", input="tokens", label="tags"))
    kind.fit(pd.DataFrame({"tags": [["B-X", "O"]]}))
    outputs = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
    (words,) = kind.probabilities(outputs)
    assert [max(word, key=word.get) for word in words] == kind.decode(kind.predict(outputs))[0]
    assert all(sum(word.values()) == pytest.approx(1.0) for word in words)


def test_predict_reports_bad_requests(loaded: LoadedRun) -> None:
    with pytest.raises(ConfigError, match=r"tasks: unknown task\(s\) \['upp'\].*'up'"):
        loaded.predict(ROWS, tasks=["upp"])
    with pytest.raises(DataError, match=r"column\(s\) \['colour'\] missing"):
        loaded.predict([{"a": 1.0, "b": 0.0, "c": 0.0}])
    with pytest.raises(DataError, match="rows: got str"):
        loaded.predict("a.csv")  # type: ignore[arg-type]


def _lines(output: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.splitlines()]


def test_cli_predicts_several_tasks_with_probabilities_and_ids(run_dir: Path,
                                                               tmp_path: Path) -> None:
    rows = tmp_path / "rows.csv"
    pd.DataFrame(ROWS).assign(id=["r-a", "r-b", "r-c"]).to_csv(rows, index=False)
    result = runner.invoke(app, ["predict", str(run_dir), "--input", str(rows),
                                 "--tasks", "up,flags", "--proba", "--id-column", "id"])
    assert result.exit_code == 0, result.output
    lines = _lines(result.stdout)
    assert [(line["row"], line["id"]) for line in lines] == [(0, "r-a"), (1, "r-b"), (2, "r-c")]
    assert list(lines[0]) == ["row", "id", "up", "flags"]
    assert set(lines[0]["up"]) == {"no", "yes"}  # type: ignore[arg-type]

    every = _lines(runner.invoke(app, ["predict", str(run_dir), "--input", str(rows)]).stdout)
    assert list(every[0]) == ["row", "up", "size", "flags"]
    alias = runner.invoke(app, ["predict", str(run_dir), "--task", "up", "--input", str(rows)])
    assert [line["up"] for line in _lines(alias.stdout)] == [line["up"] for line in every]


def test_cli_names_a_missing_id_column(run_dir: Path, tmp_path: Path) -> None:
    rows = tmp_path / "rows.csv"
    pd.DataFrame(ROWS).to_csv(rows, index=False)
    result = runner.invoke(app, ["predict", str(run_dir), "--input", str(rows),
                                 "--id-column", "key"])
    assert result.exit_code == 2
    assert "--id-column" in result.output and "'key'" in result.output


def test_cli_reads_input_rows_like_training_data(run_dir: Path, tmp_path: Path) -> None:
    """--input goes through the data reader: a ';'-separated CSV is not one column, and a
    ragged row is reported with its line."""
    rows = tmp_path / "rows.csv"
    pd.DataFrame(ROWS).to_csv(rows, index=False, sep=";")
    result = runner.invoke(app, ["predict", str(run_dir), "--input", str(rows)])
    assert result.exit_code == 0, result.output
    assert len(_lines(result.stdout)) == len(pd.DataFrame(ROWS))
    ragged = tmp_path / "ragged.csv"
    ragged.write_text(rows.read_text() + "1;2;3;4;5;6;7;8\n")
    result = runner.invoke(app, ["predict", str(run_dir), "--input", str(ragged)])
    assert result.exit_code == 2
    assert "--input" in result.output and "line 5" in result.output
