"""`polytask tasks list` and `polytask tasks show NAME`."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from polytask.cli import app
from polytask.tasks import catalog

RUNNER = CliRunner()


def test_tasks_list_names_every_entry_with_kind_and_metric() -> None:
    result = RUNNER.invoke(app, ["tasks", "list"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for name, item in catalog.entries().items():
        row = next(line for line in lines if line.split()[:1] == [name])
        assert item.kind in row and str(item.metric) in row


def test_tasks_show_prints_the_entry_and_the_task_it_declares() -> None:
    result = RUNNER.invoke(app, ["tasks", "show", "squad_v2"])
    assert result.exit_code == 0, result.output
    entry_part, task_part = result.output.split("# the task it declares")
    declared = yaml.safe_load(entry_part)["squad_v2"]
    assert declared["columns"]["answer_text"] == "answers.text"
    task = yaml.safe_load(task_part.split("\n", 1)[1])
    assert task["kind"] == "extractive_qa" and task["options"] == {"unanswerable": True}
    assert task["data"]["path"] == "rajpurkar/squad_v2" and task["data"]["carve"] == [
        "validation"]


def test_tasks_show_an_unknown_name_says_did_you_mean() -> None:
    result = RUNNER.invoke(app, ["tasks", "show", "glue/sts-b"])
    assert result.exit_code == 2
    assert "no catalog task 'glue/sts-b'. Did you mean 'glue/stsb'" in result.output
