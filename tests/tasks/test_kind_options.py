"""A task's `options` are checked against its kind's schema, naming the field."""

from __future__ import annotations

import pytest

from polytask.errors import ConfigError
from polytask.tasks.kinds import TASK_KINDS
from polytask.tasks.spec import Task


def test_a_kind_without_options_refuses_any_naming_the_field_and_the_known_ones() -> None:
    task = Task(name="t", kind="classification", input="x", label="y", options={"stride": 8})
    with pytest.raises(ConfigError, match=r"tasks\.t\.options\.stride.*takes the options: none"):
        TASK_KINDS.get("classification")(task)


def test_no_options_is_valid() -> None:
    task = Task(name="t", kind="classification", input="x", label="y")
    assert TASK_KINDS.get("classification")(task).options.model_dump() == {}
