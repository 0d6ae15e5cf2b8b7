"""Regression: one or more real targets, MSE/L1/Huber loss on standardised targets."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from polytask.errors import DataError
from polytask.tasks import metrics as M
from polytask.tasks.kinds.base import (
    TASK_KINDS,
    TaskKind,
    masked_mean,
)


@TASK_KINDS.register("regression", paper="Regression (MSE, L1 or Huber loss)")
class Regression(TaskKind):
    """One or more real-valued targets (one label column each); the task's `loss` (MSE by
    default, or L1 / Huber) on standardised targets (mean and std fitted on train),
    predictions reported in the original units."""

    default_metric = "mae"
    metric_names = ("mae", "mse", "pearson", "spearman", "pearson_spearman")

    def fit(self, train: pd.DataFrame) -> None:
        values = self._values(train, "train")
        empty = [c for c, n in zip(self.task.label_columns, (~np.isnan(values)).sum(0),
                                   strict=True) if not n]
        if empty:
            raise DataError(
                f"tasks.{self.task.name}: no labelled row in the training split for label "
                f"column(s) {empty}; check the column or the split."
            )
        self.mean = np.nanmean(values, axis=0).tolist()
        std = np.nanstd(values, axis=0)
        self.std = np.where(std > 0, std, 1.0).tolist()
        self.label_names = self.task.label_columns

    def _values(self, frame: pd.DataFrame, split: str) -> np.ndarray:
        cells = frame[self.task.label_columns]
        if self.task.missing_label is not None:
            cells = cells.map(lambda v: np.nan if self._is_marked_missing(v) else v)
        try:
            values = cells.astype("float64").to_numpy()
        except (TypeError, ValueError) as error:
            raise DataError(
                f"tasks.{self.task.name}: regression label column(s) {self.task.label_columns} "
                f"in the {split} split hold non-numeric values ({error}). Clean them, or use "
                "kind: classification if the values are categories."
            ) from None
        self._check_finite(values, split)
        return values

    def _check_finite(self, values: np.ndarray, split: str) -> None:
        """Labels are stored as float32: ±inf, or a value beyond the float32 range (which
        becomes inf there), is reported with its column, split and row."""
        with np.errstate(invalid="ignore"):
            bad = np.isinf(values) | (np.abs(values) > np.finfo(np.float32).max)
        rows, columns = np.nonzero(bad)
        if not rows.size:
            return
        row, column = int(rows[0]), int(columns[0])
        raise DataError(
            f"tasks.{self.task.name}: regression label column "
            f"{[self.task.label_columns[column]]} holds {values[row, column]:g} in row {row} of "
            f"the {split} split ({rows.size} such label(s) in that split); labels must be finite, "
            "and float32 makes any value beyond ±3.4e38 infinite. Fix or drop those rows, or "
            "leave their labels empty to mark them missing."
        )

    def state(self) -> dict[str, Any]:
        return {"labels": self.label_names, "mean": self.mean, "std": self.std}

    def load_state(self, state: dict[str, Any]) -> None:
        self.label_names, self.mean, self.std = state["labels"], state["mean"], state["std"]

    @property
    def num_outputs(self) -> int:
        return len(self.task.label_columns)

    def encode(self, frame: pd.DataFrame, split: str) -> Tensor:
        return torch.tensor(self._values(frame, split), dtype=torch.float32)

    def _moments_like(self, values: Tensor) -> tuple[Tensor, Tensor]:
        """Train mean and std on the device (and in the dtype) of `values`."""
        return self._tensor_like(self.mean, values), self._tensor_like(self.std, values)

    def _standardise(self, labels: Tensor) -> Tensor:
        mean, std = self._moments_like(labels)
        return (labels - mean) / std

    def _elementwise_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The task's `loss` per element, in standard deviations of each target."""
        if self.task.loss == "l1":
            return F.l1_loss(outputs, targets, reduction="none")
        if self.task.loss == "huber":
            delta = self.task.huber_delta if self.task.huber_delta is not None else 1.0
            return F.huber_loss(outputs, targets, reduction="none", delta=delta)
        return F.mse_loss(outputs, targets, reduction="none")

    def loss(self, outputs: Tensor, labels: Tensor) -> Tensor:
        missing = labels.isnan().any(dim=-1)
        targets = self._standardise(labels).nan_to_num(0.0).to(outputs.dtype)
        return masked_mean(self._elementwise_loss(outputs, targets), missing)

    def predict(self, outputs: Tensor) -> Tensor:
        values = outputs.detach().float()
        mean, std = self._moments_like(values)
        return values * std + mean

    def metrics(self, predictions: Tensor, labels: Tensor) -> dict[str, float]:
        keep = ~labels.isnan().any(dim=-1)
        return M.regression_metrics(predictions[keep].numpy(), labels[keep].numpy())

    def decode(self, predictions: Tensor) -> list[Any]:
        rows = predictions.tolist()
        return [r[0] if len(r) == 1 else r for r in rows]
