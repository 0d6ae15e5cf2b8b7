"""Token classification: one tag per word (IOB), entity-level metrics."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import Tensor

from polytask.errors import DataError
from polytask.tasks import metrics as M
from polytask.tasks.kinds.base import (
    IGNORE,
    TASK_KINDS,
    TaskKind,
    is_sequence,
    masked_cross_entropy,
)


@TASK_KINDS.register("token_classification", paper="Token classification (IOB tagging)")
class TokenClassification(TaskKind):
    """One tag per word (e.g. B-PER/I-PER/O). Input: a column of word lists; labels: a
    column of tag lists of the same length. Only the first sub-word of each word is scored;
    metrics are entity-level (seqeval-style)."""

    level = "token"
    default_metric = "entity_f1"
    metric_names = ("entity_f1", "entity_precision", "entity_recall", "token_accuracy")

    def _tag_rows(self, frame: pd.DataFrame, split: str) -> list[Any]:
        """Each row's tag list (None: unlabelled row)."""
        rows = []
        for i, row in enumerate(self._column(frame).tolist()):
            if not is_sequence(row) and self._missing(row):
                rows.append(None)
            elif is_sequence(row):
                rows.append(list(row))
            else:
                raise DataError(
                    f"tasks.{self.task.name}.label: row {i} of the {split} split holds "
                    f"{row!r}; token classification needs a list of tags per row, one per word "
                    "of the input (e.g. ['B-PER', 'O'])."
                )
        return rows

    def fit(self, train: pd.DataFrame) -> None:
        rows = self._tag_rows(train, "train")
        tags = [t for row in rows if row is not None for t in row if not self._missing(t)]
        if not tags:
            raise self._no_labelled_row()
        if self.task.labels is not None:
            self.label_names = list(self.task.labels)
        else:
            self.label_names = self._names_from(tags)
        self._stripped = 0  # reported when the train split is encoded

    def encode(self, frame: pd.DataFrame, split: str) -> Tensor:
        """Word-level tag ids padded with IGNORE (so are missing tags); the data layer aligns
        them to sub-words."""
        index = self._label_index()
        rows = self._tag_rows(frame, split)
        width = max((len(r) for r in rows if r is not None), default=0)
        out = torch.full((len(rows), max(width, 1)), IGNORE, dtype=torch.long)
        for i, row in enumerate(rows):
            for j, tag in enumerate(row if row is not None else []):
                if self._missing(tag):
                    continue  # an untagged word is left out of the loss and the metrics
                name = self._label_name(tag)
                if name not in index:
                    raise self._unknown_label(tag, split)
                out[i, j] = index[name]
        self._report_stripped(split)
        return out

    def loss(self, outputs: Tensor, labels: Tensor) -> Tensor:
        return masked_cross_entropy(outputs, labels)

    def predict(self, outputs: Tensor) -> Tensor:
        return outputs.argmax(dim=-1)

    def _tag_lists(self, ids: Tensor, mask: Tensor) -> list[list[str]]:
        assert self.label_names is not None
        return [
            [self.label_names[i] for i, m in zip(row, keep, strict=True) if m]
            for row, keep in zip(ids.tolist(), mask.tolist(), strict=True)
        ]

    def metrics(self, predictions: Tensor, labels: Tensor) -> dict[str, float]:
        mask = labels != IGNORE
        return M.token_classification_metrics(
            self._tag_lists(predictions, mask), self._tag_lists(labels.clamp(min=0), mask)
        )

    def decode(self, predictions: Tensor) -> list[Any]:
        assert self.label_names is not None
        return [[self.label_names[i] for i in row] for row in predictions.tolist()]

    def probabilities(self, outputs: Tensor) -> list[Any]:
        return self._label_probabilities(outputs.softmax(dim=-1))
