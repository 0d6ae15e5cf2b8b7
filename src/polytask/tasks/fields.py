"""Nested field paths such as `answers.text[0]`, and text templates over a row's columns.

A path is dotted keys and `[N]` list indices (N >= 0), nothing else: it is parsed with a
regular expression, never evaluated, so a dataset declaration cannot run code. Hub datasets
hold nested fields as dicts (a struct) and lists or numpy arrays (a sequence); both are
walked here. A template's fields are plain `{column}` names (no attribute access, indexing
or format specs), filled in by substitution.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from polytask.errors import DataError

Step = str | int  # a key (str) or a list index (int)

_KEY = r"[A-Za-z_][\w-]*"
_STEP = re.compile(rf"(?:^|\.)({_KEY})|\[(\d+)\]")
_WHOLE = re.compile(rf"{_KEY}(?:\[\d+\])*(?:\.{_KEY}(?:\[\d+\])*)*")


def parse_field_path(path: str, where: str) -> tuple[Step, ...]:
    """`'answers.text[0]'` -> `('answers', 'text', 0)`; ValueError naming `where` if the
    path is not dotted keys and [N] indices."""
    if not isinstance(path, str) or not _WHOLE.fullmatch(path):
        raise ValueError(f"{where}: {path!r} is not a field path; write dotted keys and [N] "
                         "list indices, e.g. answers.text[0]")
    return tuple(key if key else int(index) for key, index in _STEP.findall(path))


def _step_into(value: Any, step: Step) -> tuple[bool, Any]:
    """(found, the value one step down). An index past the end is found-but-empty (None);
    a key that is not there is not found."""
    if isinstance(step, int):
        if not isinstance(value, list | tuple | np.ndarray):
            return False, None
        return True, value[step] if step < len(value) else None
    if isinstance(value, Mapping) and step in value:
        return True, value[step]
    return False, None


def read_field(row: Any, steps: tuple[Step, ...]) -> tuple[bool, Any]:
    """The value at `steps` in `row`: (False, None) when a key is missing or a step goes
    into a value that is not a mapping/list; (True, None) when the path runs into an empty
    cell or past the end of a list."""
    value = row
    for step in steps:
        if value is None:
            return True, None
        found, value = _step_into(value, step)
        if not found:
            return False, None
    return True, value


def _plain(value: Any) -> Any:
    """numpy arrays (how datasets' to_pandas gives sequences) as lists, numpy scalars as
    Python ones, so kinds see the same values whether rows came from the hub or a file."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def select_columns(frame: pd.DataFrame, columns: Mapping[str, str], split: str,
                   where: str) -> pd.DataFrame:
    """A table of `columns` (new name -> field path), read from the rows of `frame`."""
    records = frame.to_dict("records")
    selected: dict[str, list[Any]] = {}
    for name, path in columns.items():
        steps = parse_field_path(path, f"{where}.columns.{name}")
        values = []
        for i, record in enumerate(records):
            found, value = read_field(record, steps)
            if not found:
                raise DataError(
                    f"{where}.columns.{name}: row {i} of the {split} split has no field {path!r} "
                    f"(its top-level columns: {list(frame.columns)}); fix the path")
            values.append(_plain(value))
        selected[name] = values
    return pd.DataFrame(selected, index=range(len(records)))


def check_field_paths(paths: dict[str, str], field: str) -> dict[str, str]:
    """`paths` ({column: field path}) once every path parses; ValueError naming
    `field.column` for the first that does not."""
    for column, path in paths.items():
        parse_field_path(path, f"{field}.{column}")
    return paths


def template_fields(template: str, where: str) -> list[str]:
    """The `{column}` names a template reads; ValueError naming `where` for anything but
    plain names (a template is data, not code)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ValueError(f"{where}: {template!r} is not a valid template: {error}") from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"{where}: {{{name}}} in {template!r} is not a plain column "
                             "placeholder; write {column} (and {{ or }} for a literal brace)")
        names.append(name)
    return names


def compose_columns(frame: pd.DataFrame, compose: Mapping[str, str], split: str,
                    where: str) -> pd.DataFrame:
    """`frame` with a text column per template of `compose` (new column -> template)."""
    frame = frame.copy()
    for name, template in compose.items():
        fields = template_fields(template, f"{where}.compose.{name}")
        missing = [f for f in fields if f not in frame.columns]
        if missing:
            raise DataError(f"{where}.compose.{name}: the template reads column(s) {missing}, "
                            f"which the {split} split lacks; its columns: {list(frame.columns)}")
        frame[name] = [template.format_map({f: "" if v is None else v for f, v in row.items()})
                       for row in frame[fields].to_dict("records")]
    return frame
