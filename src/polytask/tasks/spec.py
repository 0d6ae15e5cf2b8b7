"""What a task is: its name, kind, columns, labels, metric and where its data comes from.

A `Task` is both a config section (YAML `tasks:` entries) and a Python object
(`polytask.Task(...)`). Its `data` is either a `DataSpec` (files or a hub dataset) or an
in-memory table: a pandas DataFrame, a dict of split name -> DataFrame, a dict of column
name -> list, or a `datasets.Dataset`/`DatasetDict`. A task without `data` reads the run's
shared dataset (one dataset whose rows carry a label column per task).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

_IN_MEMORY_VALUES = ("DataFrame", "Dataset", "list", "ndarray", "Series")

SPLITS = ("train", "validation", "test")


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
        default_factory=dict, description="Keep at most N rows per split: {train: 1000}."
    )

    @field_validator("split_names", "max_rows")
    @classmethod
    def _known_splits(cls, value: dict[str, Any]) -> dict[str, Any]:
        for split in value:
            if split not in SPLITS:
                raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        return value


def coerce_data(value: Any) -> Any:
    """A mapping of file settings becomes a `DataSpec` (so its keys are checked); a table
    (DataFrame, Dataset, dict of split -> table or column -> list) stays in memory."""
    if isinstance(value, dict) and not any(
        type(v).__name__ in _IN_MEMORY_VALUES or type(v).__name__.endswith("DatasetDict")
        for v in value.values()
    ):
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
        "per label. Regression: one column per output."
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

    @property
    def input_columns(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)

    @property
    def label_columns(self) -> list[str]:
        return [self.label] if isinstance(self.label, str) else list(self.label)
