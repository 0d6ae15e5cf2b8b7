"""What a task is: its name, kind, columns, labels, metric and where its data comes from.

A `Task` is both a config section (YAML `tasks:` entries) and a Python object
(`polytask.Task(...)`). Its `data` is either a `DataSpec` (files or a hub dataset) or an
in-memory table: a pandas DataFrame, a dict of split name -> DataFrame, a dict of column
name -> list, or a `datasets.Dataset`/`DatasetDict`. A task without `data` reads the run's
shared dataset (one dataset whose rows carry a label column per task).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_IN_MEMORY_VALUES = ("DataFrame", "Dataset", "list", "ndarray", "Series")

SPLITS = ("train", "validation", "test")
IN_MEMORY = "<in-memory>"  # what a saved config holds in place of an in-memory table


class DataSpec(BaseModel):
    """Where rows come from: local files (CSV, JSON/JSONL, Parquet) or a hub dataset."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(
        None, description="A local file or folder, or a hub dataset id (then set `hub: true`)."
    )
    files: dict[str, str] | None = Field(
        None, description="One local file per split: {train: a.csv, validation: b.csv}."
    )
    hub: bool = Field(False, description="Load `path` from the Hugging Face hub (needs network).")
    subset: str | None = Field(None, description="Hub dataset configuration name, e.g. 'sst2'.")
    revision: str | None = Field(None, description="Hub dataset revision (commit or tag).")
    trust_remote_code: bool = Field(
        False, description="Allow the hub dataset to run its own code. Off unless you say so."
    )
    split_names: dict[str, str] = Field(
        default_factory=dict,
        description="Map polytask's split names to the dataset's, e.g. {validation: dev}.",
    )
    rename: dict[str, str] = Field(
        default_factory=dict, description="Rename columns after loading: {old: new}."
    )
    constant: dict[str, Any] = Field(
        default_factory=dict, description="Add constant columns: {column: value}."
    )
    max_rows: dict[str, int] = Field(
        default_factory=dict, description="Keep at most N rows per split: {train: 1000}; "
        "applied after missing splits are carved, so a carved split is limited too."
    )

    @field_validator("split_names", "max_rows")
    @classmethod
    def _known_splits(cls, value: dict[str, Any]) -> dict[str, Any]:
        for split in value:
            if split not in SPLITS:
                raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        return value

    @field_validator("max_rows")
    @classmethod
    def _positive_rows(cls, value: dict[str, int]) -> dict[str, int]:
        for split, rows in value.items():
            if rows < 1:
                raise ValueError(f"{split}: keep at least 1 row (got {rows}); drop the entry "
                                 "to keep every row")
        return value

    @field_validator("split_names")
    @classmethod
    def _distinct_splits(cls, value: dict[str, str]) -> dict[str, str]:
        implicit = {s: s for s in SPLITS if s not in value}  # unmapped splits keep their name
        used: dict[str, str] = {}
        for split, name in {**implicit, **value}.items():
            if name in used and split in value:
                raise ValueError(
                    f"{split} and {used[name]} would both read the dataset's split {name!r}; "
                    "evaluating on training rows hides overfitting. Map each to its own split, "
                    "or leave validation/test out to carve them from train."
                )
            used[name] = split
        return value

    @field_validator("constant")
    @classmethod
    def _scalar_constants(cls, value: dict[str, Any]) -> dict[str, Any]:
        for column, constant in value.items():
            if constant is not None and not isinstance(constant, str | int | float | bool):
                raise ValueError(f"{column}: a constant column takes one value (a string, "
                                 f"number or boolean), got {type(constant).__name__} "
                                 f"{constant!r}")
        return value


def _is_table_value(value: Any) -> bool:
    name = type(value).__name__
    return name in _IN_MEMORY_VALUES or name.endswith("DatasetDict")


def coerce_data(value: Any) -> Any:
    """A mapping of file settings becomes a `DataSpec` (so its keys are checked); a table
    (DataFrame, Dataset, dict of split -> table or column -> list) stays in memory.

    A mapping that names a file setting (`path: x.csv`, `files: ...`) is a `DataSpec` even if
    another of its values is a list, so a misspelt key is reported instead of turning the
    whole section into a two-column table."""
    if isinstance(value, str | Path) and value != IN_MEMORY:
        raise ValueError(f"give a mapping, e.g. `data: {{path: {value}}}` (a file, a folder "
                         "or, with `hub: true`, a hub dataset id)")
    if isinstance(value, dict):
        names_a_setting = any(
            key in DataSpec.model_fields and not _is_table_value(v) for key, v in value.items()
        )
        if names_a_setting or not any(_is_table_value(v) for v in value.values()):
            return DataSpec.model_validate(value)
    return value


class Task(BaseModel):
    """One task: a kind (classification, multilabel, regression, token_classification),
    the input and label columns, and optionally its own data."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    name: str = Field(description="Unique task name; used in logs, results and `--task`.")
    kind: str = Field(description="Task kind, e.g. classification, multilabel, regression.")
    input: str | list[str] = Field(
        description="Input column(s): one text column (or two for sentence pairs) for a text "
        "backbone; feature columns for a tabular backbone; a token-list column for tokens."
    )
    label: str | list[str] = Field(
        description="Label column. Multilabel: a column of label lists, or one 0/1 column "
        "per label (named by `labels` in column order, else by the column names). "
        "Regression: one column per output."
    )
    labels: list[str] | None = Field(
        None, description="Label names, in id order. Inferred (sorted) from train if omitted."
    )
    label_map: dict[str, str] = Field(
        default_factory=dict, description="Map raw label values to label names before encoding."
    )
    metric: str | None = Field(None, description="Primary metric; the kind's default if omitted.")
    data: DataSpec | Any = Field(
        None, description="This task's own dataset; omitted: the run's shared `data`."
    )

    _data = field_validator("data", mode="before")(classmethod(lambda cls, v: coerce_data(v)))

    @field_validator("input", "label")
    @classmethod
    def _some_columns(cls, value: str | list[str]) -> str | list[str]:
        columns = [value] if isinstance(value, str) else value
        if not columns or any(not c for c in columns):
            raise ValueError("name at least one column (and no empty names)")
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if repeated:
            raise ValueError(f"column(s) {repeated} listed more than once")
        return value

    @field_validator("labels")
    @classmethod
    def _distinct_labels(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("the label list is empty; list the label names, or omit `labels` "
                             "to infer them from the training split")
        repeated = sorted({v for v in value if value.count(v) > 1})
        if repeated:
            raise ValueError(f"label(s) {repeated} listed more than once; each name is one "
                             "output of the head")
        return value

    @model_validator(mode="after")
    def _labels_match_columns(self) -> Task:
        columns = self.label_columns
        if (self.kind == "multilabel" and len(columns) > 1 and self.labels is not None
                and len(self.labels) != len(columns)):
            raise ValueError(
                f"labels: {len(self.labels)} name(s) {self.labels} for {len(columns)} 0/1 label "
                f"columns {columns}; give one name per column, in column order (or omit `labels` "
                "to use the column names)"
            )
        return self

    @property
    def input_columns(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)

    @property
    def label_columns(self) -> list[str]:
        return [self.label] if isinstance(self.label, str) else list(self.label)
