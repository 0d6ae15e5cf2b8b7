"""Task kinds: each owns its head, loss, label encoding, predictions and metrics.

A kind is registered in `TASK_KINDS` and instantiated per task
(`TASK_KINDS.get(task.kind)(task)`). Missing labels are encoded as a mask value
(-100 for class ids, NaN for floats) and excluded from the loss and the metrics, so one
dataset can carry a label column per task with gaps.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytask.errors import DataError
from polytask.registry import Registry
from polytask.tasks import metrics as M
from polytask.tasks.spec import Task

TASK_KINDS: Registry[type[TaskKind]] = Registry("task kind")
IGNORE = -100  # class id of a missing label (PyTorch's cross-entropy default)
_FLAGS = {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0, "false": 0.0, "true": 1.0}


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def _is_sequence(value: Any) -> bool:
    return isinstance(value, list | tuple | np.ndarray)


def _shown(names: Sequence[str] | None, limit: int = 12) -> str:
    """A label list for a message, cut short when it is long."""
    names = list(names or [])
    if len(names) <= limit:
        return str(names)
    return f"{names[:limit]} and {len(names) - limit} more"


class TaskKind(ABC):
    """Everything that depends on what a task predicts."""

    level: ClassVar[Literal["sequence", "token"]] = "sequence"
    default_metric: ClassVar[str]
    metric_names: ClassVar[tuple[str, ...]]

    def __init__(self, task: Task) -> None:
        self.task = task
        self.metric = task.metric or self.default_metric
        if self.metric not in self.metric_names:
            raise DataError(
                f"tasks.{task.name}.metric: {self.metric!r} is not a metric of kind "
                f"{task.kind!r}; use one of {', '.join(self.metric_names)}."
            )
        self.higher_is_better = M.higher_is_better(self.metric)
        self._stripped = 0  # label values whose whitespace was stripped since the last report
        self._tensors: dict[tuple[Any, ...], Tensor] = {}  # see `_tensor_like`

    # -- labels -----------------------------------------------------------------------
    @abstractmethod
    def fit(self, train: pd.DataFrame) -> None:
        """Learn what the labels are (names, output size) from the training rows."""

    @abstractmethod
    def encode(self, frame: pd.DataFrame, split: str) -> Tensor:
        """Label tensor for every row of `frame` (missing labels masked)."""

    @property
    def num_outputs(self) -> int:
        """Width of the head's output: one per label unless the kind says otherwise."""
        assert self.label_names is not None
        return len(self.label_names)

    def _label_index(self) -> dict[str, int]:
        assert self.label_names is not None
        return {name: i for i, name in enumerate(self.label_names)}

    def state(self) -> dict[str, Any]:
        """What must be saved with a model to decode its predictions."""
        return {"labels": self.label_names}

    def load_state(self, state: dict[str, Any]) -> None:
        self.label_names = state["labels"]

    label_names: list[str] | None = None

    def _tensor_like(self, values: Sequence[float], like: Tensor) -> Tensor:
        """`values` (label statistics, class weights) as a tensor on the device and in the
        dtype of `like`: made once and kept, since the loss needs it at every step."""
        key = (tuple(values), like.device, like.dtype)
        tensor = self._tensors.get(key)
        if tensor is None:
            tensor = torch.tensor(values, dtype=like.dtype, device=like.device)
            self._tensors[key] = tensor
        return tensor

    # -- model ------------------------------------------------------------------------
    def build_head(self, input_dim: int) -> nn.Module:
        return nn.Linear(input_dim, self.num_outputs)

    @abstractmethod
    def loss(self, outputs: Tensor, labels: Tensor) -> Tensor:
        """Mean loss over the labelled rows; 0 (with a graph) if none is labelled."""

    def training_loss(self, outputs: Tensor, labels: Tensor) -> Tensor:
        """`loss` of a batch of the training split that `fit` saw (what the Trainer steps
        on): a kind may compute it faster from what `fit` learned of that split, with the
        same value and gradients."""
        return self.loss(outputs, labels)

    @abstractmethod
    def predict(self, outputs: Tensor) -> Tensor:
        """Predictions (class ids, 0/1 matrix, values) from head outputs."""

    @abstractmethod
    def metrics(self, predictions: Tensor, labels: Tensor) -> dict[str, float]:
        """Every metric of this kind, over the labelled rows."""

    @abstractmethod
    def decode(self, predictions: Tensor) -> list[Any]:
        """Human-readable predictions, one per row."""

    def probabilities(self, outputs: Tensor) -> list[Any]:
        """Per row, the probability of each label as `{label: p}` (per word for token
        tasks). A kind without labels to weigh (regression) gives its decoded prediction."""
        return self.decode(self.predict(outputs))

    def _label_probabilities(self, probabilities: Tensor) -> list[Any]:
        """`{label: p}` for every vector along the last dimension, nested like the input."""
        assert self.label_names is not None
        names = self.label_names

        def as_dicts(rows: Any) -> Any:
            if rows and isinstance(rows[0], float):
                return dict(zip(names, rows, strict=True))
            return [as_dicts(row) for row in rows]

        return as_dicts(probabilities.float().tolist())

    def _column(self, frame: pd.DataFrame) -> pd.Series:
        return frame[self.task.label_columns[0]]

    def _names_from(self, values: Sequence[Any]) -> list[str]:
        found = sorted({self._label_name(v) for v in values if not self._missing(v)})
        if not found:
            raise DataError(
                f"tasks.{self.task.name}: no labelled row in the training split; "
                f"check the label column {self.task.label!r}."
            )
        return found

    def _label_name(self, value: Any) -> str:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        text = str(value)
        if self.task.strip_labels and text != text.strip():
            text = text.strip()
            self._stripped += 1
        return self.task.label_map.get(text, text)

    def _is_marked_missing(self, value: Any) -> bool:
        """The cell is the task's `missing_label` marker."""
        marker = self.task.missing_label
        if marker is None or not isinstance(value, str):
            return False
        return (value.strip() if self.task.strip_labels else value) == marker

    def _missing(self, value: Any) -> bool:
        """An empty cell (NaN/None) or the task's `missing_label` marker."""
        return _is_missing(value) or self._is_marked_missing(value)

    def _report_stripped(self, split: str) -> None:
        """Say how many label values of `split` lost surrounding whitespace, then reset."""
        if self._stripped:
            warnings.warn(
                f"tasks.{self.task.name}: stripped whitespace from {self._stripped} label "
                f"value(s) in the {split} split; set `strip_labels: false` to keep labels as "
                "written.", UserWarning, stacklevel=3)
        self._stripped = 0

    def _no_labelled_row(self) -> DataError:
        return DataError(
            f"tasks.{self.task.name}: no labelled row in the training split; check the label "
            f"column(s) {self.task.label_columns} (an empty cell means 'no label')."
        )

    def _unknown_label(self, value: Any, split: str) -> DataError:
        hint = ""
        if isinstance(value, float) and not value.is_integer():
            hint = (f" The label column holds non-integer numbers: is {self.task.name!r} a "
                    "regression task (kind: regression)?")
        return DataError(
            f"tasks.{self.task.name}: label {value!r} in the {split} split is not in the label "
            f"list {_shown(self.label_names)}. Add it to `labels`, or map it with "
            f"`label_map`.{hint}"
        )


def _masked_cross_entropy(outputs: Tensor, labels: Tensor,
                          class_weights: Tensor | None = None) -> Tensor:
    """Cross-entropy averaged over the labelled positions (rows or tokens; IGNORE skipped),
    0 with a graph when none is labelled. With `class_weights`, each position's loss is
    scaled by its class's weight (still divided by the number of labelled positions, so
    'balanced' weights keep the loss on the unweighted scale). No host sync: it runs every
    step."""
    flat = labels.reshape(-1)
    total = F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), flat, weight=class_weights,
                            ignore_index=IGNORE, reduction="sum")
    return total / (flat != IGNORE).sum().clamp(min=1)


def _masked_mean(elementwise: Tensor, missing: Tensor) -> Tensor:
    """Mean of `elementwise` (rows x outputs) over the rows not `missing`; 0 with a graph
    when every row is missing. No host sync."""
    keep = (~missing).unsqueeze(-1).to(elementwise.dtype)
    count = keep.sum() * elementwise.shape[-1]
    return (elementwise * keep).sum() / count.clamp(min=1)


@TASK_KINDS.register("classification", paper="Single-label classification (cross-entropy)")
class Classification(TaskKind):
    """One label per row out of C classes; softmax cross-entropy."""

    default_metric = "accuracy"
    metric_names = ("accuracy", "macro_f1", "mcc")
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
                    f"list {_shown(names)}; key the weights by label name (after `label_map`)."
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
        return _masked_cross_entropy(outputs, labels, self._weights_like(outputs))

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
            elif _is_missing(value):  # an empty cell (CSV reads it as NaN): no labels
                out.append(set())
            elif isinstance(value, str):
                out.append({self._label_name(v) for v in value.split("|") if v.strip()})
            elif _is_sequence(value):
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
        if isinstance(value, str) and value.strip().lower() in _FLAGS:
            return _FLAGS[value.strip().lower()]
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
        return _masked_mean(F.binary_cross_entropy_with_logits(
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


@TASK_KINDS.register("regression", paper="Regression (MSE, L1 or Huber loss)")
class Regression(TaskKind):
    """One or more real-valued targets (one label column each); the task's `loss` (MSE by
    default, or L1 / Huber) on standardised targets (mean and std fitted on train),
    predictions reported in the original units."""

    default_metric = "mae"
    metric_names = ("mae", "mse", "pearson", "spearman")

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
        return _masked_mean(self._elementwise_loss(outputs, targets), missing)

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
            if not _is_sequence(row) and self._missing(row):
                rows.append(None)
            elif _is_sequence(row):
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
        return _masked_cross_entropy(outputs, labels)

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
