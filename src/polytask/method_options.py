"""Options of every registered method, read from its constructor, checked when a config loads.

A config section such as `balancer: {name: cagrad, c: 0.4}` passes its keys (other than
`name`) to the method's constructor. This module derives one pydantic model per method from
that constructor's signature and type hints, so a misspelt or mistyped option fails before
any data is read, and a new method needs no code here. Parameters the system supplies (an
architecture's input width and task names, a sampler's sizes, steps and seed) and those a
config cannot express (a balancer's `torch.Generator`) are not options.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from polytask.balance import BALANCERS
from polytask.balance.engine import Options
from polytask.models.adapters import ADAPTERS
from polytask.models.sharing import ARCHITECTURES
from polytask.registry import Registry
from polytask.tasks.sampling import SAMPLERS

__all__ = ["METHOD_FIELDS", "MethodOption", "check_method_options", "method_options"]

#: Config field of each method section -> the registry its `name` is looked up in.
METHOD_FIELDS: dict[str, Registry[Any]] = {
    "sampler": SAMPLERS,
    "balancer": BALANCERS,
    "model.architecture": ARCHITECTURES,
    "model.adapter": ADAPTERS,
}
#: Constructor parameters that are not config options, per registry family.
_NOT_OPTIONS: dict[str, frozenset[str]] = {
    "sampler": frozenset({"sizes", "total_steps", "seed"}),
    "architecture": frozenset({"input_dim", "task_names"}),
    "balancer": frozenset({"generator"}),
    "adapter": frozenset({"task_names"}),
}


class _Section(Protocol):
    """A method section of the config: its `name` and its other keys."""

    name: str

    @property
    def options(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class MethodOption:
    """One option of a method, as `polytask methods --json` lists it."""

    name: str
    type: str
    default: Any
    required: bool
    wrapper: bool = False


def _type_name(annotation: Any) -> str:
    """A type as written in the source (`float | None`), whether or not the annotation was
    left a string (`from __future__ import annotations`)."""
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def _extra_options(family: str) -> dict[str, tuple[Any, Any, str]]:
    """Options every method of the family takes besides its own: the balancing engine's
    (`balance.engine.Options`), as name -> (type, default, type as written)."""
    if family != "balancer":
        return {}
    hints = typing.get_type_hints(Options)
    return {f.name: (hints[f.name], f.default, _type_name(f.type)) for f in fields(Options)}


def _parameters(registry: Registry[Any], name: str) -> list[inspect.Parameter]:
    skip = _NOT_OPTIONS.get(registry.family, frozenset())
    return [p for p in inspect.signature(registry.get(name)).parameters.values()
            if p.name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _json_default(value: Any) -> Any:
    try:
        json.dumps(value)
    except TypeError:
        return repr(value)
    return value


def method_options(registry: Registry[Any], name: str) -> list[MethodOption]:
    """The options of method `name` of `registry`, in constructor order, then the wrappers."""
    own = [MethodOption(p.name, _type_name(p.annotation), None if p.default is p.empty
                        else _json_default(p.default), p.default is p.empty)
           for p in _parameters(registry, name)]
    wrappers = [MethodOption(key, written, _json_default(default), False, wrapper=True)
                for key, (_, default, written) in _extra_options(registry.family).items()]
    return own + wrappers


@functools.cache
def _options_model(registry: Registry[Any], name: str) -> type[BaseModel]:
    """A strict pydantic model of the method's options (unknown keys forbidden)."""
    method = registry.get(name)
    hints = typing.get_type_hints(method.__init__)
    options: dict[str, Any] = {
        p.name: (hints.get(p.name, Any), ... if p.default is p.empty else p.default)
        for p in _parameters(registry, name)
    }
    options.update({key: (kind, default)
                    for key, (kind, default, _) in _extra_options(registry.family).items()})
    config = ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True)
    return create_model(f"{method.__name__}Options", __config__=config, **options)


def _describe(field: str, name: str, error: Mapping[str, Any],
              options: list[MethodOption]) -> str:
    key = str(error["loc"][0]) if error["loc"] else ""
    valid = [o.name for o in options]
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        choices = ", ".join(valid) if valid else "none"
        return f"{field}.{key}: {name!r} has no option {key!r}.{hint} Its options: {choices}"
    option = next(o for o in options if o.name == key)
    if error["type"] == "missing":
        return f"{field}.{key}: {name!r} needs option {key!r} ({option.type}); add it"
    return (f"{field}.{key}: {name!r} expects {option.type}: {error['msg']} "
            f"(got {error['input']!r})")


def check_method_options(sections: Mapping[str, _Section]) -> None:
    """Check each method section's options against its method's constructor.

    `sections` maps a config field in METHOD_FIELDS to its section. Raises ValueError with
    one line per problem: the field, the method, the option and the nearest valid option.
    """
    problems = []
    for field, section in sections.items():
        registry = METHOD_FIELDS[field]
        try:
            _options_model(registry, section.name).model_validate(section.options)
        except ValidationError as error:
            options = method_options(registry, section.name)
            first: dict[str, Any] = {}  # a union type reports once per member: keep one
            for item in error.errors():
                first.setdefault(str(item["loc"][:1]), item)
            problems += [_describe(field, section.name, e, options) for e in first.values()]
    if problems:
        raise ValueError("\n  ".join(problems))
