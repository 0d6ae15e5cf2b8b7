"""`polytask report` says when it skips lines of metrics.jsonl it cannot read."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from polytask.cli import app
from polytask.evaluate.report import read_records

LINES = [json.dumps({"step": 1, "split": "train", "loss/up": 0.5}), "{not json",
         json.dumps({"step": 2, "split": "train", "loss/up": 0.4}), "", "[1, 2]",
         '{"step": 3, "split": "tr']  # a torn last line, as a killed run leaves it


def _metrics(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "metrics.jsonl"
    path.write_text("\n".join(LINES) + "\n")
    return path


def test_unreadable_lines_are_counted_with_the_first_line_number(tmp_path: Path) -> None:
    messages: list[str] = []
    records = read_records(_metrics(tmp_path), warn=messages.append)
    assert [r["step"] for r in records] == [1, 2]
    assert messages == [f"{tmp_path / 'metrics.jsonl'}: skipped 3 unreadable line(s) "
                        "(first: line 2)"]


def test_a_clean_file_says_nothing(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(LINES[0] + "\n\n")
    messages: list[str] = []
    assert len(read_records(path, warn=messages.append)) == 1
    assert messages == []


def test_report_command_prints_the_skip_on_stderr(tmp_path: Path) -> None:
    _metrics(tmp_path / "run")
    result = CliRunner().invoke(app, ["report", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "metrics.jsonl: skipped 3 unreadable line(s) (first: line 2)" in result.stderr
    assert "skipped" not in result.stdout
