"""The schema of a catalog file: its task entries and an optional benchmark average.

A catalog file is YAML data validated by these pydantic models (`extra="forbid"`, so a
misspelt key is an error); nothing in it is evaluated as code. Field paths (`answers.text[0]`)
are parsed by `polytask.tasks.fields`, templates by `string.Formatter` (names only).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from polytask.files import plain_name
from polytask.tasks.fields import check_field_paths, template_fields
from polytask.tasks.spec import SPLITS

Split = Literal["train", "validation", "test"]


class HubSource(BaseModel):
    """Where the rows come from when no local files are given: a Hugging Face hub dataset."""

    model_config = ConfigDict(extra="forbid")

    hub: str = Field(description="Hub dataset id, e.g. nyu-mll/glue.")
    subset: str | None = Field(None, description="Dataset configuration, e.g. rte.")
    revision: str | None = Field(None, description="Dataset revision (commit, tag or branch).")


class CatalogEntry(BaseModel):
    """One task of the catalog: its data (hub source, splits, column mapping, composed text
    columns), its kind, labels and official metric, its kind's options, and the templates
    that cast it to other kinds (text-to-text)."""

    model_config = ConfigDict(extra="forbid")

    description: str = Field(description="One line: what the task is.")
    kind: str = Field(description="The task kind, e.g. classification, extractive_qa.")
    source: HubSource
    splits: dict[Split, str] = Field(
        default_factory=lambda: {"train": "train", "validation": "validation", "test": "test"},
        description="polytask split -> the dataset's split. A polytask split left out is "
        "carved from train (and recorded in splits.json).",
    )
    hidden_labels: list[str] = Field(
        default_factory=list, description="The dataset's splits whose labels are hidden (e.g. "
        "GLUE's test): never read; map polytask's test to the official validation split and "
        "leave validation out to carve it from train.",
    )
    extra_splits: dict[str, str] = Field(
        default_factory=dict, description="Further labelled splits scored like test, e.g. "
        "{test_mismatched: validation_mismatched} for MNLI.",
    )
    columns: dict[str, str] = Field(
        description="Task column -> field path in the dataset's rows (dotted keys and [N] "
        "indices, e.g. answers.text[0]). The task reads only these columns.",
    )
    input: str | list[str] = Field(description="Input column(s), among `columns`.")
    label: str | list[str] = Field(description="Label column(s), among `columns`.")
    labels: list[str] | None = Field(None, description="Label names, in id order.")
    label_map: dict[str, str] = Field(
        default_factory=dict, description="Raw label value -> label name, e.g. {'0': entailment}."
    )
    metric: str | None = Field(None, description="The official primary metric.")
    compose: dict[str, str] = Field(
        default_factory=dict, description="New text columns from templates over `columns`: "
        "{context: '{premise} What was the {question}?'}.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="The kind's options (see docs/tasks.md)."
    )
    casts: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="The options of each other kind the task can be cast "
        "to with `{catalog: NAME, kind: KIND}`, e.g. generation: {prompt: 'rte sentence1: "
        "{sentence1} sentence2: {sentence2}', verbalizer: {...}} (T5-style text-to-text).",
    )
    url: str | None = Field(None, description="Where the dataset and its licence are described.")

    @field_validator("label_map", mode="before")
    @classmethod
    def _keys_as_text(cls, value: Any) -> Any:
        """YAML numbers as keys ({0: entailment}) are the label values' text."""
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        return value

    @field_validator("columns")
    @classmethod
    def _paths(cls, value: dict[str, str]) -> dict[str, str]:
        return check_field_paths(value, "columns")

    @model_validator(mode="after")
    def _consistent(self) -> CatalogEntry:
        if "train" not in self.splits:
            raise ValueError("splits: map polytask's train split to one of the dataset's")
        hidden = sorted(set(self.hidden_labels) & {*self.splits.values(),
                                                   *self.extra_splits.values()})
        if hidden:
            raise ValueError(f"splits: {hidden} hold hidden labels (hidden_labels), so they "
                             "cannot be read; map test to the official validation split")
        columns = {*self.columns, *self.compose}
        for role in ("input", "label"):
            value = getattr(self, role)
            for column in [value] if isinstance(value, str) else value:
                if column not in columns:
                    raise ValueError(f"{role}: column {column!r} is neither in `columns` nor in "
                                     f"`compose` ({sorted(columns)}); map it there")
        for name, template in self.compose.items():
            self._check_template(template, f"compose.{name}", set(self.columns))
        for kind, options in self.casts.items():
            for key, template in options.items():
                if isinstance(template, str):  # prompt, target: the label is a field too
                    self._check_template(template, f"casts.{kind}.{key}", columns | {"label"})
        return self

    @staticmethod
    def _check_template(template: str, where: str, columns: set[str]) -> None:
        for name in template_fields(template, where):
            if name not in columns:
                raise ValueError(f"{where}: {{{name}}} is not a column of the task "
                                 f"({sorted(columns)}); map it in `columns`")

    @property
    def carved(self) -> list[Split]:
        """polytask splits this entry carves from train."""
        return [s for s in SPLITS if s not in self.splits]  # type: ignore[misc]


class BenchmarkScore(BaseModel):
    """One number of a benchmark average: a task's metric (or the mean of several) on its
    test split or on one of its extra splits."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(description="The entry's name within the file, e.g. mnli.")
    metrics: list[str] = Field(min_length=1, description="Averaged first when several.")
    split: str = Field("test", description="test, or an extra split of the entry.")


class Benchmark(BaseModel):
    """A benchmark's overall score: the mean of its `scores` (GLUE's macro average)."""

    model_config = ConfigDict(extra="forbid")

    description: str
    scores: list[BenchmarkScore] = Field(min_length=1)


class CatalogFile(BaseModel):
    """One YAML file of the catalog: a group of entries (named `group/entry`, or `entry`
    when the file has no group) and optionally their benchmark average."""

    model_config = ConfigDict(extra="forbid")

    group: str | None = Field(None, description="Name prefix of the entries, e.g. glue.")
    description: str
    benchmark: Benchmark | None = None
    tasks: dict[str, CatalogEntry] = Field(min_length=1)

    @field_validator("group")
    @classmethod
    def _plain_group(cls, value: str | None) -> str | None:
        return None if value is None else plain_name(value, "catalog group")

    @field_validator("tasks")
    @classmethod
    def _plain_names(cls, value: dict[str, CatalogEntry]) -> dict[str, CatalogEntry]:
        for name in value:
            plain_name(name, "catalog task name")
        return value

    @model_validator(mode="after")
    def _benchmark_names_entries(self) -> CatalogFile:
        for score in self.benchmark.scores if self.benchmark else []:
            entry = self.tasks.get(score.task)
            if entry is None:
                raise ValueError(f"benchmark: task {score.task!r} is not in this file's tasks "
                                 f"({sorted(self.tasks)})")
            if score.split != "test" and score.split not in entry.extra_splits:
                raise ValueError(f"benchmark: {score.task} has no extra split {score.split!r}")
        return self
