"""The balancing engine's options (`update_every`, `representation`, `sparse`, `sam_rho`),
which every balancer takes, are listed and checked with their real types and defaults."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from polytask import load_config
from polytask.cli import app
from polytask.errors import ConfigError

ENGINE_OPTIONS = {
    "representation": ("bool", False),
    "update_every": ("int", 1),
    "sparse": ("float | None", None),
    "sam_rho": ("float | None", None),
}


def _balancer(**options: Any) -> dict[str, Any]:
    return {"data": {"path": "does-not-exist.csv"},
            "tasks": [{"name": "a", "kind": "classification", "input": ["x"], "label": "y"}],
            "balancer": {"name": "mgda", **options}}


def test_methods_json_types_the_engine_options() -> None:
    result = CliRunner().invoke(app, ["methods", "--json"])
    assert result.exit_code == 0, result.output
    for record in json.loads(result.output):
        if record["family"] != "balancer":
            continue
        listed = {o["name"]: (o["type"], o["default"]) for o in record["options"]
                  if o["wrapper"]}
        assert listed == ENGINE_OPTIONS, record["name"]


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("update_every", 2.5, "expects int"),
    ("update_every", "3", "expects int"),
    ("representation", "yes", "expects bool"),
    ("sam_rho", "0.05", "expects float | None"),
])
def test_a_mistyped_engine_option_fails_when_the_config_loads(option: str, value: Any,
                                                               expected: str) -> None:
    with pytest.raises(ConfigError, match=f"balancer.{option}: 'mgda' {expected}"):
        load_config(_balancer(**{option: value}))


@pytest.mark.parametrize("options", [
    {"update_every": 3, "representation": True},
    {"update_every": 2, "sparse": 1, "sam_rho": None},  # an int is a float here, as in YAML
])
def test_well_typed_engine_options_load(options: dict[str, Any]) -> None:
    assert load_config(_balancer(**options)).balancer.options == options
