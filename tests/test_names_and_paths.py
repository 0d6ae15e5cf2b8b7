"""Task and run names become folder names: bad ones are refused when the config loads, and
paths built from names never leave their folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from polytask import load_config
from polytask.errors import ConfigError
from polytask.files import inside
from polytask.train.baselines import baseline_dir
from tests.conftest import tabular_config

BAD_NAMES = ["/tmp/elsewhere", "a/b", "..", "../../x", "a\\b", "", ".hidden", "-x", "a b"]


def _config(path: Path, task: str = "up", run: str | None = None) -> dict[str, object]:
    config = tabular_config(path)
    config["tasks"][0]["name"] = task  # type: ignore[index]
    if run is not None:
        config["name"] = run
    return config


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_task_name_that_is_not_a_plain_name_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(_config(tmp_path / "data.csv", task=name))
    message = str(raised.value)
    assert "tasks.0.name: a task name becomes a file or folder name, so use letters, digits, " \
           "_, - and . (no /, \\ or ..; not starting with . or -), e.g. '" in message
    assert f"(got {name!r})" in message


@pytest.mark.parametrize(("name", "suggestion"), [
    ("/tmp/elsewhere", "tmp_elsewhere"), ("a/b", "a_b"), ("../../x", "x"), ("a\\b", "a_b"),
    ("..", "task_1")])
def test_the_message_suggests_a_plain_name(tmp_path: Path, name: str, suggestion: str) -> None:
    with pytest.raises(ConfigError, match=f"e.g. '{suggestion}'"):
        load_config(_config(tmp_path / "data.csv", task=name))


@pytest.mark.parametrize("name", ["sst-2", "task.v1", "ner_2", "_private", "Ünïcode"])
def test_plain_task_names_are_accepted(tmp_path: Path, name: str) -> None:
    assert load_config(_config(tmp_path / "data.csv", task=name)).tasks[0].name == name


@pytest.mark.parametrize("name", ["../runs-elsewhere", "/tmp/run", "a/b"])
def test_a_run_name_that_is_not_a_plain_name_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match=r"name: a run name becomes a file or folder name"):
        load_config(_config(tmp_path / "data.csv", run=name))
    with pytest.raises(ConfigError, match=r"name: a run name"):
        load_config(_config(tmp_path / "data.csv"), [f"name={name}"])


def test_plain_run_names_are_accepted(tmp_path: Path) -> None:
    assert load_config(_config(tmp_path / "data.csv", run="census-mmoe.v2")).name == \
        "census-mmoe.v2"


@pytest.mark.parametrize("part", ["../x", "/abs/path", "a/../../b", ".", ""])
def test_inside_refuses_a_path_that_leaves_its_folder(tmp_path: Path, part: str) -> None:
    with pytest.raises(ConfigError, match=f"leads outside {str(tmp_path)!r}"):
        inside(tmp_path, part)


def test_inside_joins_plain_names(tmp_path: Path) -> None:
    assert inside(tmp_path, "sst-2-abc123") == tmp_path / "sst-2-abc123"
    assert inside("runs/baselines", "a", "b.json") == Path("runs/baselines/a/b.json")


def test_a_baseline_folder_stays_inside_baselines_dir(tmp_path: Path,
                                                      tabular_file: Path) -> None:
    config = load_config({**tabular_config(tabular_file), "baselines_dir": str(tmp_path)})
    assert baseline_dir(config, "up").parent == tmp_path
    # a Task changed in Python without validation cannot lead the folder elsewhere either
    task = config.tasks[0].model_copy(update={"name": "../../escaped"})
    sneaky = config.model_copy(update={"tasks": [task, *config.tasks[1:]]})
    with pytest.raises(ConfigError, match="leads outside"):
        baseline_dir(sneaky, "../../escaped")
