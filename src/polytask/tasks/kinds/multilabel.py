"""Multi-label classification: a set of labels per row, binary cross-entropy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from polytask.errors import DataError
from polytask.tasks import metrics as M
from polytask.tasks.kinds.base import (
    FLAGS,
    TASK_KINDS,
    TaskKind,
    is_missing,
    is_sequence,
    masked_mean,
)


@TASK_KINDS.register("multilabel", paper="Multi-label classification (binary cross-entropy)")
class MultiLabel(TaskKind):
    """Any subset of C labels per row; independent sigmoids. Labels come as one column of
    label lists (or '|'-separated strings), or as one 0/1 column per label. In a column of
    label lists an empty cell (NaN/None/'') means 'no labels'; only the task's
    `missing_label` marker marks a row as unlabelled."""

    default_metric = "micro_f1"
    metric_names = ("micro_f1", "macro_f1", "subset_accuracy")

    def _row_sets(self, frame: pd.DataFrame, split: str) -> list[set[str] | None]:
        """Label names per row (None: unlabelled) from one column of label lists."""
        column = self.task.label_columns[0]
        out: list[set[str] | None] = []
        for value in frame[column].tolist():
            if self._is_marked_missing(value):
                out.append(None)
            elif is_missing(value):  # an empty cell (CSV reads it as NaN): no labels
                out.append(set())
            elif isinstance(value, str):
                out.append({self._label_name(v) for v in value.split("|") if v.strip()})
            elif is_sequence(value):
                out.append({self._label_name(v) for v in value if not self._missing(v)})
            else:
                raise DataError(
                    f"tasks.{self.task.name}.label: column {column!r} holds {value!r} in the "
                    f"{split} split; a multilabel column holds a list of labels or a "
                    "'|'-separated string (e.g. 'sports|politics'). For one 0/1 column per "
                    "label, list the columns: `label: [col_a, col_b]`."
                )
        return out

    def _flag(self, value: Any, column: str, split: str) -> float:
        """A 0/1 label cell as 0.0 or 1.0."""
        if isinstance(value, bool | np.bool_):
            return float(value)
        if isinstance(value, int | float | np.integer | np.floating) and value in (0, 1):
            return float(value)
        if isinstance(value, str) and value.strip().lower() in FLAGS:
            return FLAGS[value.strip().lower()]
        raise DataError(
            f"tasks.{self.task.name}.label: column {column!r} holds {value!r} in the {split} "
            "split; with one column per label every value must be 0/1 (or true/false). For a "
            "column of label lists, give a single `label` column."
        )

    def _missing_row(self, values: Sequence[Any]) -> bool:
        """A row of 0/1 cells with a missing cell is unlabelled."""
        return any(self._missing(v) for v in values)

    def fit(self, train: pd.DataFrame) -> None:
        columns = self.task.label_columns
        row_sets: list[set[str]] = []
        if len(columns) > 1:
            rows = train[columns].itertuples(index=False)
            if all(self._missing_row(row) for row in rows):
                raise self._no_labelled_row()
        else:
            row_sets = [s for s in self._row_sets(train, "train") if s is not None]
            if not any(row_sets):  # no row carries a label: nothing to learn
                raise DataError(
                    f"tasks.{self.task.name}: no labelled row in the training split: no row of "
                    f"column(s) {columns} holds a label (an empty cell means 'no labels'). Check "
                    "the column; mark unknown labels with `missing_label`."
                )
        self._stripped = 0  # reported when the train split is encoded
        if self.task.labels is not None:
            self.label_names = list(self.task.labels)
        elif len(columns) > 1:  # one 0/1 column per label: its name (or its label_map entry)
            self.label_names = [self.task.label_map.get(c, c) for c in columns]
        else:
            self.label_names = sorted(set().union(*row_sets))

    def encode(self, frame: pd.DataFrame, split: str) -> Tensor:
        columns = self.task.label_columns
        out = torch.zeros(len(frame), self.num_outputs)
        if len(columns) > 1:  # column i is output i, whatever the label names are
            for row, values in enumerate(frame[columns].itertuples(index=False)):
                if self._missing_row(values):
                    out[row] = float("nan")
                    continue
                out[row] = torch.tensor([self._flag(v, c, split)
                                         for c, v in zip(columns, values, strict=True)])
            return out
        index = self._label_index()
        for row, labels in enumerate(self._row_sets(frame, split)):
            if labels is None:
                out[row] = float("nan")
                continue
            for name in labels:
                if name not in index:
                    raise self._unknown_label(name, split)
                out[row, index[name]] = 1.0
        self._report_stripped(split)
        return out

    def loss(self, outputs: Tensor, labels: Tensor) -> Tensor:
        missing = labels.isnan().any(dim=-1)
        targets = labels.nan_to_num(0.0)
        return masked_mean(F.binary_cross_entropy_with_logits(
            outputs, targets, reduction="none"), missing)

    def predict(self, outputs: Tensor) -> Tensor:
        return (outputs > 0).long()

    def metrics(self, predictions: Tensor, labels: Tensor) -> dict[str, float]:
        keep = ~labels.isnan().any(dim=-1)
        return M.multilabel_metrics(predictions[keep].numpy(), labels[keep].long().numpy())

    def decode(self, predictions: Tensor) -> list[Any]:
        assert self.label_names is not None
        return [
            [n for n, on in zip(self.label_names, row, strict=True) if on]
            for row in predictions.tolist()
        ]

    def probabilities(self, outputs: Tensor) -> list[Any]:
        return self._label_probabilities(outputs.sigmoid())
