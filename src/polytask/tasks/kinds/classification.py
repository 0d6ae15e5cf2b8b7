"""Single-label classification: one label per row, cross-entropy, accuracy/F1 metrics."""

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
    IGNORE,
    TASK_KINDS,
    TaskKind,
    masked_cross_entropy,
    shown,
)


@TASK_KINDS.register("classification", paper="Single-label classification (cross-entropy)")
class Classification(TaskKind):
    """One label per row out of C classes; softmax cross-entropy."""

    default_metric = "accuracy"
    metric_names = ("accuracy", "macro_f1", "mcc", "f1", "f1_accuracy")
    class_weights: list[float] | None = None  # per label id, from `class_weight`
    #: Decided in `fit`: the training split has no blank label and there are no class
    #: weights, so `training_loss` is a plain `F.cross_entropy` (the masked loss's value
    #: and gradients to the bit, in fewer kernels per step). False for a kind loaded from a
    #: saved model.
    plain_loss: bool = False

    def fit(self, train: pd.DataFrame) -> None:
        values = self._column(train).tolist()
        if all(self._missing(v) for v in values):
            raise self._no_labelled_row()
        if self.task.labels is not None:
            self.label_names = list(self.task.labels)
        else:
            self.label_names = self._names_from(values)
        if len(self.label_names) < 2:
            raise DataError(
                f"tasks.{self.task.name}: classification needs at least 2 labels, found "
                f"{self.label_names}. Check the label column or list `labels`."
            )
        train_ids = self._ids(values, "train")
        self._set_class_weights(train_ids)
        self.plain_loss = self.class_weights is None and IGNORE not in train_ids
        self._stripped = 0  # reported when the train split is encoded

    def _ids(self, values: Sequence[Any], split: str) -> list[int]:
        """Label id per value (IGNORE for a missing one)."""
        index = self._label_index()
        ids = []
        for value in values:
            if self._missing(value):
                ids.append(IGNORE)
                continue
            name = self._label_name(value)
            if name not in index:
                raise self._unknown_label(value, split)
            ids.append(index[name])
        return ids

    def _set_class_weights(self, train_ids: list[int]) -> None:
        """Weights per label id from `class_weight`: 'balanced' (from the train counts) or
        an explicit {label: weight} mapping (unlisted labels weigh 1)."""
        setting, names = self.task.class_weight, self.label_names
        assert names is not None
        if setting is None:
            self.class_weights = None
        elif setting == "balanced":
            self.class_weights = self._balanced_weights(train_ids)
        else:
            unknown = sorted(set(setting) - set(names))
            if unknown:
                raise DataError(
                    f"tasks.{self.task.name}.class_weight: label(s) {unknown} are not in the label "
                    f"list {shown(names)}; key the weights by label name (after `label_map`)."
                )
            self.class_weights = [float(setting.get(name, 1.0)) for name in names]

    def _balanced_weights(self, train_ids: list[int]) -> list[float]:
        """n_samples / (n_classes * count of the class) over the labelled train rows."""
        from sklearn.utils.class_weight import compute_class_weight

        assert self.label_names is not None
        labelled = np.array([i for i in train_ids if i != IGNORE])
        counts = np.bincount(labelled, minlength=len(self.label_names))
        absent = [n for n, c in zip(self.label_names, counts, strict=True) if not c]
        if absent:
            raise DataError(
                f"tasks.{self.task.name}.class_weight: 'balanced' needs every class in the train "
                f"split, but {absent} never occur(s); give explicit weights "
                "(class_weight: {label: weight}) or remove those labels from `labels`."
            )
        classes = np.arange(len(self.label_names))
        return compute_class_weight("balanced", classes=classes, y=labelled).tolist()

    def state(self) -> dict[str, Any]:
        return {"labels": self.label_names, "class_weights": self.class_weights}

    def load_state(self, state: dict[str, Any]) -> None:
        self.label_names = state["labels"]
        self.class_weights = state.get("class_weights")

    def encode(self, frame: pd.DataFrame, split: str) -> Tensor:
        ids = self._ids(self._column(frame).tolist(), split)
        self._report_stripped(split)
        return torch.tensor(ids, dtype=torch.long)

    def _weights_like(self, outputs: Tensor) -> Tensor | None:
        """The class weights on the outputs' device and dtype."""
        if self.class_weights is None:
            return None
        return self._tensor_like(self.class_weights, outputs)

    def loss(self, outputs: Tensor, labels: Tensor) -> Tensor:
        return masked_cross_entropy(outputs, labels, self._weights_like(outputs))

    def training_loss(self, outputs: Tensor, labels: Tensor) -> Tensor:
        """With `plain_loss`, PyTorch's mean cross-entropy: every row of a training batch is
        labelled, so it equals the masked loss to the bit, in fewer kernels."""
        if self.plain_loss:
            return F.cross_entropy(outputs, labels)
        return self.loss(outputs, labels)

    def predict(self, outputs: Tensor) -> Tensor:
        return outputs.argmax(dim=-1)

    def metrics(self, predictions: Tensor, labels: Tensor) -> dict[str, float]:
        keep = labels != IGNORE
        return M.classification_metrics(
            predictions[keep].numpy(), labels[keep].numpy(), self.num_outputs
        )

    def decode(self, predictions: Tensor) -> list[Any]:
        assert self.label_names is not None
        return [self.label_names[i] for i in predictions.tolist()]

    def probabilities(self, outputs: Tensor) -> list[Any]:
        return self._label_probabilities(outputs.softmax(dim=-1))
