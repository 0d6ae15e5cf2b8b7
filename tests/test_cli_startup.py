"""`polytask --help` and the light commands start without importing the Hugging Face
libraries (over a second together); the commands that may load them still set their output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from polytask.cli import _LIGHT_COMMANDS, app

HEAVY = ["transformers", "datasets"]
#: Runs the CLI in a fresh interpreter, then reports which heavy packages it imported.
PROBE = ("import sys\nfrom polytask.cli import app\ntry:\n    app(sys.argv[1:])\n"
         "except SystemExit:\n    pass\n"
         f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})), "
         "file=sys.stderr)\n")


def _imported_by(*arguments: str) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE, *arguments], capture_output=True,
                          text=True, check=True, timeout=120)
    return done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("arguments", [["--help"], ["methods", "--json"], ["report", "--help"],
                                       ["--verbose", "methods"], ["tasks", "list"]])
def test_light_commands_leave_the_hugging_face_libraries_unimported(
        arguments: list[str]) -> None:
    assert _imported_by(*arguments) == "[]"


def test_a_command_that_may_load_them_sets_their_output(tmp_path: Path) -> None:
    assert _imported_by("eval", str(tmp_path / "no-run")) == str(sorted(HEAVY))


def test_the_light_commands_are_registered_commands() -> None:
    names = {command.name or command.callback.__name__.replace("_", "-")
             for command in app.registered_commands if command.callback is not None}
    names |= {group.name for group in app.registered_groups}  # sub-apps: `polytask tasks`
    assert {"methods", "report"} <= _LIGHT_COMMANDS <= names
