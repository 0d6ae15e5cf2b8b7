"""The declarative task catalog: well-known datasets declared as YAML data (tasksource-style).

Each YAML file of `builtin/` is a `CatalogFile` (see `schema`): a group of entries named
`group/entry` (`glue/rte`) or `entry` (`squad`), each declaring its hub source, split names,
a column mapping (nested fields such as `answers.text[0]`), composed text columns, labels,
official metric and the templates that cast it to other kinds (text-to-text), and optionally
the benchmark's average (GLUE's score). A config names entries in
`tasks:` (`glue/rte`, or `{catalog: glue/rte, max_rows: ...}`); `catalog_task` turns one into
a `Task` whose `DataSpec` loads the hub dataset at run time, or the same layout from local
`data_files`. Nothing here touches the network.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from polytask.errors import ConfigError
from polytask.files import load_yaml
from polytask.tasks.catalog.schema import CatalogEntry, CatalogFile
from polytask.tasks.spec import DataSpec, Task

__all__ = ["CatalogEntry", "CatalogRef", "benchmark_scores", "catalog_task", "entries",
           "entry", "is_catalog_reference"]

_BUILTIN = "builtin"


class CatalogRef(BaseModel):
    """A catalog task in a config, with per-run overrides: `{catalog: glue/rte, max_rows:
    {train: 1000}}`. A plain string `glue/rte` is `{catalog: glue/rte}`."""

    model_config = ConfigDict(extra="forbid")

    catalog: str = Field(description="The catalog entry, e.g. glue/rte (`polytask tasks list`).")
    name: str | None = Field(
        None, description="The task's name in the run; the entry's own name (rte) if omitted.")
    kind: str | None = Field(
        None, description="Cast the task to another kind the entry declares in `casts` (e.g. "
        "generation: T5-style text-to-text), with that cast's templates as options.")
    metric: str | None = Field(None, description="Primary metric; the entry's official one "
                               "if omitted.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Kind options, over the entry's (or the cast's).")
    max_rows: dict[str, int] = Field(
        default_factory=dict, description="Keep at most N rows per split: {train: 1000}.")
    data_files: dict[str, str] | None = Field(
        None, description="Local files in the hub dataset's layout, one per dataset split "
        "({train: rte_train.jsonl, validation: rte_dev.jsonl}): read instead of the hub.")
    revision: str | None = Field(None, description="Hub dataset revision, over the entry's.")


def _qualified(group: str | None, name: str) -> str:
    return f"{group}/{name}" if group else name


@functools.cache
def _files() -> dict[str, CatalogFile]:
    """The built-in catalog files by file name, validated once."""
    folder = resources.files(__package__).joinpath(_BUILTIN)
    files: dict[str, CatalogFile] = {}
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if not path.name.endswith(".yaml"):
            continue
        try:
            files[path.name] = CatalogFile.model_validate(load_yaml(path.read_text("utf-8")))
        except ValidationError as error:
            raise ConfigError(f"catalog file {path.name}: {error}") from None
    return files


@functools.cache
def entries() -> dict[str, CatalogEntry]:
    """Every catalog entry by its full name (`glue/rte`, `squad`), in file order."""
    found: dict[str, CatalogEntry] = {}
    for file in _files().values():
        for name, item in file.tasks.items():
            found[_qualified(file.group, name)] = item
    return found


def _suggestions(name: str) -> list[str]:
    """Entries close to `name`, by full name or by the part after the group."""
    names = list(entries())
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    short = name.rsplit("/", 1)[-1]
    by_short = [n for n in names if difflib.get_close_matches(short, [n.rsplit("/", 1)[-1]],
                                                              cutoff=0.75)]
    return list(dict.fromkeys([*close, *by_short]))[:4]


def entry(name: str) -> CatalogEntry:
    """The entry called `name`; a ConfigError with the nearest names if there is none."""
    found = entries().get(name)
    if found is None:
        close = _suggestions(name)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"no catalog task {name!r}.{hint} `polytask tasks list` shows the "
                          "catalog")
    return found


def is_catalog_reference(value: Any) -> bool:
    """A `tasks:` item that names a catalog entry: a string, or a mapping with `catalog`."""
    return isinstance(value, str) or (isinstance(value, Mapping) and "catalog" in value)


def _data(item: CatalogEntry, ref: CatalogRef) -> DataSpec:
    """Where the task's rows come from: local files in the hub layout, else the hub."""
    common: dict[str, Any] = {
        "split_names": item.splits, "carve": item.carved, "columns": item.columns,
        "compose": item.compose, "extra_splits": item.extra_splits, "max_rows": ref.max_rows,
    }
    if ref.data_files is not None:
        return DataSpec(files=ref.data_files, **common)
    source = item.source
    return DataSpec(path=source.hub, hub=True, subset=source.subset,
                    revision=ref.revision or source.revision, **common)


def catalog_task(value: str | Mapping[str, Any]) -> Task:
    """The `Task` a `tasks:` item naming a catalog entry declares. ConfigError (unknown
    entry, with a did-you-mean) or pydantic's ValidationError (a bad override)."""
    ref = CatalogRef.model_validate({"catalog": value} if isinstance(value, str) else value)
    item = entry(ref.catalog)
    kind, options = item.kind, item.options
    if ref.kind is not None and ref.kind != item.kind:
        if ref.kind not in item.casts:
            casts = ", ".join(item.casts) or "none"
            raise ConfigError(f"{ref.catalog}: kind {ref.kind!r} is not a cast the entry "
                              f"declares (its kind: {item.kind}; casts: {casts}); `polytask "
                              f"tasks show {ref.catalog}` shows them")
        kind, options = ref.kind, item.casts[ref.kind]
    return Task(
        name=ref.name or ref.catalog.rsplit("/", 1)[-1], kind=kind, input=item.input,
        label=item.label, labels=item.labels, label_map=item.label_map,
        metric=ref.metric or item.metric, options={**options, **ref.options},
        data=_data(item, ref), catalog_entry=ref.catalog,
    )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def benchmark_scores(tasks: Sequence[Task], test: Mapping[str, Mapping[str, float]],
                     extra: Mapping[str, Mapping[str, Mapping[str, float]]],
                     ) -> dict[str, dict[str, Any]]:
    """Each benchmark average (by group, e.g. `glue`) that a run's catalog tasks take part
    in: `score` (the mean of the benchmark's scores, each the mean of its metrics), `parts`,
    and `missing` (scores the run lacks; then `complete` is false and `score` averages the
    parts it has). `test`: task -> its test metrics; `extra`: task -> extra split -> metrics."""
    of_entry = {t.catalog_entry: t.name for t in tasks if t.catalog_entry}
    found: dict[str, dict[str, Any]] = {}
    for file in _files().values():
        if file.benchmark is None or file.group is None:
            continue
        parts: dict[str, float] = {}
        missing: list[str] = []
        for score in file.benchmark.scores:
            full = _qualified(file.group, score.task)
            label = full if score.split == "test" else f"{full}:{score.split}"
            task = of_entry.get(full)
            metrics = None if task is None else (
                test.get(task) if score.split == "test" else extra.get(task, {}).get(score.split))
            if metrics is None:
                missing.append(label)
            else:
                parts[label] = _mean([metrics[m] for m in score.metrics])
        if parts:
            found[file.group] = {"score": _mean(list(parts.values())), "complete": not missing,
                                 "parts": parts, "missing": missing,
                                 "rule": file.benchmark.description}
    return found
