"""What a task is: its name, kind, columns, labels, metric and where its data comes from.

A `Task` is both a config section (YAML `tasks:` entries) and a Python object
(`polytask.Task(...)`). Its `data` is either a `DataSpec` (files or a hub dataset) or an
in-memory table: a pandas DataFrame, a dict of split name -> DataFrame, a dict of column
name -> list, or a `datasets.Dataset`/`DatasetDict`. A task without `data` reads the run's
shared dataset (one dataset whose rows carry a label column per task).
"""

from __future__ import annotations

import codecs
import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from polytask.files import plain_name
from polytask.tasks.fields import check_field_paths, template_fields

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
    columns: dict[str, str] = Field(
        default_factory=dict, description="Build the table from these columns only, each read "
        "from a (nested) field of the rows: {answer: 'answers.text[0]', question: question}. "
        "A path is dotted keys and [N] list indices; an index past the end of a list (e.g. "
        "an unanswerable question's empty answer list) gives an empty cell. Applied before "
        "`rename`.",
    )
    compose: dict[str, str] = Field(
        default_factory=dict, description="New text columns filled from templates over the "
        "row's columns (after `columns`): {context: '{premise} What was the {question}?'}. "
        "Named {column} fields only (write {{ and }} for braces); filled in, never evaluated.",
    )
    carve: list[Literal["validation", "test"]] = Field(
        default_factory=list, description="Splits to carve from train even when the dataset "
        "has a split of that name, e.g. [validation] when `split_names: {test: validation}` "
        "because the dataset's own test labels are hidden (GLUE).",
    )
    extra_splits: dict[str, str] = Field(
        default_factory=dict, description="Further labelled splits of the dataset, scored like "
        "test at the end of a run and reported per task in results.json (`extra_splits`): "
        "{polytask name: dataset split}, e.g. {test_mismatched: validation_mismatched}.",
    )
    constant: dict[str, Any] = Field(
        default_factory=dict, description="Add constant columns: {column: value}."
    )
    max_rows: dict[str, int] = Field(
        default_factory=dict, description="Keep at most N rows per split: {train: 1000}; "
        "applied after missing splits are carved, so a carved split is limited too."
    )
    delimiter: str | None = Field(
        None, min_length=1, max_length=1,
        description="CSV/TSV files: the field separator, e.g. ';' or '\\t'. Omitted: a tab for "
        ".tsv; for .csv a comma, or the separator the header line clearly uses (';', tab, '|').",
    )
    encoding: str | None = Field(
        None, description="CSV/TSV files: the text encoding, e.g. latin-1 or cp1252; UTF-8 (with "
        "or without a byte-order mark) if omitted.",
    )
    missing_values: list[str | int | float] = Field(
        default_factory=list,
        description="CSV/TSV files: cell values that mean 'missing', e.g. ['?', -999], on top "
        "of the usual empty cell, NA, n/a, NaN and null.",
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

    @model_validator(mode="after")
    def _distinct_splits(self) -> DataSpec:
        value = self.split_names
        # unmapped splits keep their name (carved ones read nothing)
        implicit = {s: s for s in SPLITS if s not in value and s not in self.carve}
        used: dict[str, str] = {}
        for split, name in {**implicit, **value}.items():
            if name in used and split in value:
                raise ValueError(
                    f"split_names: {split} and {used[name]} would both read the dataset's "
                    f"split {name!r}; "
                    "evaluating on training rows hides overfitting. Map each to its own split, "
                    "or list the other in `carve` to carve it from train."
                )
            used[name] = split
        return self

    @field_validator("columns")
    @classmethod
    def _field_paths(cls, value: dict[str, str]) -> dict[str, str]:
        return check_field_paths(value, "columns")

    @field_validator("compose")
    @classmethod
    def _templates(cls, value: dict[str, str]) -> dict[str, str]:
        for column, template in value.items():
            template_fields(template, f"compose.{column}")
        return value

    @field_validator("extra_splits")
    @classmethod
    def _extra_split_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if name in SPLITS:
                raise ValueError(f"{name!r} is one of polytask's own splits; name the extra "
                                 "split otherwise (e.g. test_mismatched), or map it with "
                                 "`split_names`")
            plain_name(name, "extra split name")
        return value

    @model_validator(mode="after")
    def _carved_splits_unmapped(self) -> DataSpec:
        both = sorted(set(self.carve) & set(self.split_names))
        if both:
            raise ValueError(f"carve: {both} also mapped in split_names; a split is either "
                             "read from the dataset or carved from train, not both")
        return self

    @field_validator("constant")
    @classmethod
    def _scalar_constants(cls, value: dict[str, Any]) -> dict[str, Any]:
        for column, constant in value.items():
            if constant is not None and not isinstance(constant, str | int | float | bool):
                raise ValueError(f"{column}: a constant column takes one value (a string, "
                                 f"number or boolean), got {type(constant).__name__} "
                                 f"{constant!r}")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                codecs.lookup(value)
            except LookupError:
                raise ValueError(f"unknown text encoding {value!r}; use e.g. utf-8, latin-1 or "
                                 "cp1252") from None
        return value

    def resolved_against(self, base: Path) -> DataSpec:
        """This spec with relative local `path`/`files` made absolute against `base` (a hub
        id with `hub: true` stays as it is; `~` is expanded)."""

        def absolute(value: str) -> str:
            path = Path(value).expanduser()
            return str(path) if path.is_absolute() else os.path.normpath(base / path)

        update: dict[str, Any] = {}
        if self.path and not self.hub:
            update["path"] = absolute(self.path)
        if self.files:
            update["files"] = {split: absolute(file) for split, file in self.files.items()}
        return self.model_copy(update=update)


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

    name: str = Field(description="Unique task name; used in logs, results, `--task` and as a "
                      "folder name: letters, digits, _, - and . (no /, \\ or ..).")
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
    strip_labels: bool = Field(
        True, description="Strip leading/trailing whitespace from string labels (classification, "
        "multilabel and token tags) so ' setosa' and 'setosa' are one class; each split that "
        "had such values is reported. false keeps labels exactly as written."
    )
    missing_label: str | None = Field(
        None, description="A cell value that marks a missing label (e.g. '?'), excluded from the "
        "loss and the metrics, in any kind. Empty cells (NaN/None) are always missing, except in "
        "a multilabel column of label lists, where an empty cell means 'no labels'."
    )
    loss: Literal["mse", "l1", "huber"] | None = Field(
        None, description="Regression only: the training loss on the standardised targets; "
        "mse if omitted. Match it to the metric: l1 for mae, mse for mse."
    )
    huber_delta: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="With `loss: huber`: where the loss turns "
        "from squared to linear, in standard deviations of the target (default 1.0)."
    )
    class_weight: Literal["balanced"] | dict[str, float] | None = Field(
        None, description="Classification only: weight each class in the loss. 'balanced' uses "
        "n_samples / (n_classes * count of the class) from the train split (as scikit-learn); "
        "a mapping {label: weight} sets them explicitly (unlisted labels weigh 1)."
    )
    data: DataSpec | Any = Field(
        None, description="This task's own dataset; omitted: the run's shared `data`."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Settings of the task's kind (e.g. `stride` for "
        "extractive_qa, `prompt` for generation), checked against the kind's own schema when the "
        "task is built; docs/tasks.md lists each kind's options."
    )
    catalog_entry: str | None = Field(
        None, description="The catalog entry this task was declared from (e.g. glue/rte); set "
        "when `tasks:` names one. Benchmark averages such as GLUE's score read it."
    )

    _data = field_validator("data", mode="before")(classmethod(lambda cls, v: coerce_data(v)))

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        """The name becomes a folder name (baselines, runs), so it must be a plain one."""
        return plain_name(value, "task name")

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

    @field_validator("class_weight", mode="before")
    @classmethod
    def _label_keys_as_text(cls, value: Any) -> Any:
        """Numeric class names written as YAML numbers ({0: 1, 1: 5}) are label names."""
        if isinstance(value, dict):
            return {str(k) if isinstance(k, int | float) and not isinstance(k, bool) else k: v
                    for k, v in value.items()}
        return value

    @field_validator("class_weight")
    @classmethod
    def _positive_weights(cls, value: str | dict[str, float] | None) -> Any:
        if isinstance(value, dict):
            if not value:
                raise ValueError("the weight mapping is empty; give {label: weight} pairs, or "
                                 "'balanced'")
            bad = {k: w for k, w in value.items() if not (math.isfinite(w) and w > 0)}
            if bad:
                raise ValueError(f"weight(s) {bad} are not positive finite numbers; give each "
                                 "listed label a weight > 0 (unlisted labels weigh 1)")
        return value

    @model_validator(mode="after")
    def _options_fit_the_kind(self) -> Task:
        if self.loss is not None and self.kind != "regression":
            raise ValueError(f"loss: {self.loss!r} is a regression loss, but this task's kind is "
                             f"{self.kind!r}; remove `loss` (the kind picks its own loss)")
        if self.huber_delta is not None and self.loss != "huber":
            raise ValueError(f"huber_delta: {self.huber_delta} only applies with `loss: huber`; "
                             "set loss: huber or remove huber_delta")
        if self.class_weight is not None and self.kind != "classification":
            raise ValueError(f"class_weight: only classification tasks take class weights, but "
                             f"this task's kind is {self.kind!r}; remove class_weight")
        if self.missing_label is not None:
            if not self.missing_label.strip():
                raise ValueError("missing_label: give a visible marker such as '?'; empty cells "
                                 "are already missing (or 'no labels' in a multilabel list column)")
            if self.labels is not None and self.missing_label in self.labels:
                raise ValueError(f"missing_label: {self.missing_label!r} is also in `labels`; a "
                                 "value cannot be both a class and 'missing'. Pick another marker")
        return self

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
