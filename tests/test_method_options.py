"""Method options (`balancer: {name: cagrad, c: 0.4}`) are checked when the config loads,
against a model derived from each method's constructor, and listed by `polytask methods`."""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from typer.testing import CliRunner

from polytask import load_config
from polytask.cli import app
from polytask.errors import ConfigError
from polytask.method_options import METHOD_FIELDS, check_method_options, method_options
from polytask.registry import Registry

METHODS = [(f, n) for f, registry in METHOD_FIELDS.items() for n in registry.names()]


def base() -> dict[str, Any]:
    """A config whose data file does not exist: any error must come before data is read."""
    return {"data": {"path": "does-not-exist.csv"},
            "tasks": [{"name": "a", "kind": "classification", "input": ["x"], "label": "y"}]}


def config_error(**sections: Any) -> str:
    data = base()
    for key, value in sections.items():
        if key == "architecture":
            data["model"] = {"architecture": value}
        else:
            data[key] = value
    with pytest.raises(ConfigError) as info:
        load_config(data)
    return str(info.value)


@dataclass
class Section:
    """A method section: what `check_method_options` reads from the config."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@pytest.mark.parametrize(("sections", "fragments"), [
    ({"balancer": {"name": "cagrad", "cc": 0.4}},
     ("balancer.cc", "'cagrad' has no option 'cc'", "Did you mean 'c'?")),
    ({"architecture": {"name": "mmoe", "num_expert": 4}},
     ("model.architecture.num_expert", "'mmoe'", "Did you mean 'num_experts'?")),
    ({"sampler": {"name": "temperature", "temprature": 3.0}},
     ("sampler.temprature", "'temperature'", "Did you mean 'temperature'?")),
    ({"balancer": {"name": "cagrad", "c": "big"}}, ("balancer.c", "float", "'big'")),
    ({"architecture": {"name": "mmoe", "num_experts": True}},
     ("model.architecture.num_experts", "int")),
    ({"balancer": {"name": "aligned_mtl", "task_weights": [0.5, "a"]}},
     ("balancer.task_weights", "Sequence[float]")),
    ({"balancer": "fixed"}, ("balancer.weights", "'fixed' needs option 'weights'")),
])
def test_bad_options_fail_when_the_config_loads(sections: dict[str, Any],
                                                fragments: tuple[str, ...]) -> None:
    message = config_error(**sections)
    for fragment in fragments:
        assert fragment in message, message
    assert "does-not-exist" not in message


@pytest.mark.parametrize(("sections", "option"), [
    ({"sampler": {"name": "temperature", "seed": 3}}, "sampler.seed"),
    ({"architecture": {"name": "mmoe", "input_dim": 8}}, "model.architecture.input_dim"),
    ({"balancer": {"name": "pcgrad", "generator": 3}}, "balancer.generator"),
])
def test_system_supplied_parameters_are_not_options(sections: dict[str, Any],
                                                    option: str) -> None:
    assert f"{option}: " in config_error(**sections)


def test_good_options_and_balancer_wrappers_load() -> None:
    config = load_config({**base(), "balancer": {"name": "cagrad", "c": 1, "update_every": 2},
                          "model": {"architecture": {"name": "mmoe", "num_experts": 4}},
                          "sampler": {"name": "all"}})
    assert config.balancer.options == {"c": 1, "update_every": 2}


@pytest.mark.parametrize(("field_name", "name"), METHODS)
def test_every_method_builds_from_its_listed_defaults(field_name: str, name: str) -> None:
    """The derived options are real constructor keywords, and their defaults pass the check
    (which asks for the required ones by name)."""
    registry = METHOD_FIELDS[field_name]
    options = method_options(registry, name)
    defaults = {o.name: o.default for o in options if not o.required and not o.wrapper}
    required = [o.name for o in options if o.required]
    if required:
        with pytest.raises(ValueError, match=f"needs option {required[0]!r}"):
            check_method_options({field_name: Section(name, defaults)})
    else:
        check_method_options({field_name: Section(name, defaults)})
    parameters = inspect.signature(registry.get(name)).parameters
    assert all(o.name in parameters for o in options if not o.wrapper)
    assert all(parameters[k].default == v for k, v in defaults.items())


def test_a_new_method_needs_no_extra_code() -> None:
    registry: Registry[Any] = Registry("balancer")

    @registry.register("halves", paper="none")
    class Halves:
        def __init__(self, share: float = 0.5, names: list[str] | None = None) -> None:
            self.share, self.names = share, names

    listed = {o.name: o for o in method_options(registry, "halves") if not o.wrapper}
    assert listed["share"].type == "float" and listed["share"].default == 0.5
    assert listed["names"].type == "list[str] | None" and not listed["names"].required


def test_methods_json_lists_options_with_types_and_defaults() -> None:
    result = CliRunner().invoke(app, ["methods", "--json"])
    assert result.exit_code == 0, result.output
    records = {(r["family"], r["name"]): r for r in json.loads(result.output)}
    cagrad = {o["name"]: o for o in records[("balancer", "cagrad")]["options"]}
    assert cagrad["c"] == {"name": "c", "type": "float", "default": 0.4, "required": False,
                           "wrapper": False}
    assert cagrad["update_every"]["wrapper"]
    mmoe = {o["name"] for o in records[("architecture", "mmoe")]["options"]}
    assert "num_experts" in mmoe and "input_dim" not in mmoe
    assert records[("sampler", "all")]["options"] == []
