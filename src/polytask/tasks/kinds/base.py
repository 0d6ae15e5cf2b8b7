"""The task-kind interface: a kind owns its head, loss, label encoding, predictions and metrics.

A kind is one file of this package, registered in `TASK_KINDS` and instantiated per task
(`TASK_KINDS.get(task.kind)(task)`). Missing labels are encoded as a mask value
(-100 for class ids, NaN for floats) and excluded from the loss and the metrics, so one
dataset can carry a label column per task with gaps.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor, nn

from polytask.errors import ConfigError, DataError
from polytask.models.inputs import Encoded
from polytask.registry import Registry
from polytask.tasks import metrics as M
from polytask.tasks.spec import Task

TASK_KINDS: Registry[type[TaskKind]] = Registry("task kind")
IGNORE = -100  # class id of a missing label (PyTorch's cross-entropy default)
FLAGS = {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0, "false": 0.0, "true": 1.0}


def is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def is_sequence(value: Any) -> bool:
    return isinstance(value, list | tuple | np.ndarray)


def tokenizer_of(encoder: Any, task: Task, offsets: bool = False) -> Any:
    """The tokenizer of a text backbone's input encoder, for a kind that builds its inputs
    itself; `offsets`: it must map tokens to characters (a fast tokenizer)."""
    tokenizer = getattr(encoder, "tokenizer", None)
    if tokenizer is None:
        raise ConfigError(f"tasks.{task.name}: kind {task.kind!r} reads text, so it needs a text "
                          "backbone (model.backbone.type: hf)")
    if offsets and not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"tasks.{task.name}: kind {task.kind!r} maps tokens back to characters, "
                          f"which needs a fast tokenizer; {type(tokenizer).__name__} is not one. "
                          "Pick a backbone whose tokenizer has a tokenizer.json")
    return tokenizer


def shown(names: Sequence[str] | None, limit: int = 12) -> str:
    """A label list for a message, cut short when it is long."""
    names = list(names or [])
    if len(names) <= limit:
        return str(names)
    return f"{names[:limit]} and {len(names) - limit} more"


class NoOptions(BaseModel):
    """A kind without settings of its own: `options` must be empty."""

    model_config = ConfigDict(extra="forbid")


class TaskKind(ABC):
    """Everything that depends on what a task predicts."""

    level: ClassVar[str] = "sequence"
    default_metric: ClassVar[str]
    metric_names: ClassVar[tuple[str, ...]]
    #: The schema of the task's `options` (a pydantic model with `extra="forbid"`).
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, task: Task) -> None:
        self.task = task
        self.options = self._validated_options(task)
        self.metric = task.metric or self.default_metric
        if self.metric not in self.metric_names:
            raise DataError(
                f"tasks.{task.name}.metric: {self.metric!r} is not a metric of kind "
                f"{task.kind!r}; use one of {', '.join(self.metric_names)}."
            )
        self.higher_is_better = M.higher_is_better(self.metric)
        self._stripped = 0  # label values whose whitespace was stripped since the last report
        self._tensors: dict[tuple[Any, ...], Tensor] = {}  # see `_tensor_like`

    def _validated_options(self, task: Task) -> Any:
        try:
            return self.Options.model_validate(task.options)
        except ValidationError as error:
            problems = "; ".join(
                f"tasks.{task.name}.options.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                f" (got {e.get('input')!r})" for e in error.errors())
            known = ", ".join(self.Options.model_fields) or "none"
            raise ConfigError(f"{problems}. Kind {task.kind!r} takes the options: {known}.") \
                from None

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

    # -- inputs -----------------------------------------------------------------------
    #: The kind builds its task's model inputs itself (`encode_inputs`): answer windows,
    #: choice pairs, prompts. Its task then reads a dataset that no other task reads.
    owns_inputs: ClassVar[bool] = False
    #: The kind's head can answer a task it was never trained on (every generation task
    #: reads the one shared LM head), so its tasks may be held out in the cross-task
    #: protocol (`split: {eval_tasks: [...]}`). A kind whose head is the task's own
    #: (classification's Linear) cannot: an untrained head would answer at random.
    serves_unseen_tasks: ClassVar[bool] = False
    #: Image augmentation (`polytask.models.images.augment_batch`) moves a dense label map
    #: with its image: the label value of padded pixels (one that marks "no label"), and the
    #: label channel whose sign a horizontal flip reverses (None: none). Other labels pass.
    augment_fill: ClassVar[float] = 0.0
    flip_negate_channel: ClassVar[int | None] = None
    #: The kind's task reads a generative backbone (a causal LM or an encoder-decoder model,
    #: `polytask.models.generative`) and its LM head, not features: text-to-text generation.
    generative: ClassVar[bool] = False

    def encode_inputs(self, frame: pd.DataFrame, encoder: Any, split: str) -> Encoded:
        """Model inputs for the rows of `frame`, for a kind with `owns_inputs`. `encoder` is
        the backbone's input encoder (its `tokenizer` for text). Called before `encode` on
        the same frame and split, whose labels must then have one row per input row (which
        may differ from the frame's rows: one per window, say)."""
        raise NotImplementedError(f"kind {self.task.kind!r} does not encode its own inputs")

    def decode_encoded(self, predictions: Tensor, split: str, proba: bool = False) -> list[Any]:
        """For a kind with `owns_inputs`: one decoded prediction per row of the frame last
        given to `encode_inputs` for `split`, from `predict` over all its input rows in order
        (several input rows may make one frame row: windows, say). With `proba`, what the
        kind shows instead of a label (e.g. `{choice: p}`)."""
        del split, proba
        return self.decode(predictions)

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
        return is_missing(value) or self._is_marked_missing(value)

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
            f"list {shown(self.label_names)}. Add it to `labels`, or map it with "
            f"`label_map`.{hint}"
        )


def masked_cross_entropy(outputs: Tensor, labels: Tensor,
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


def masked_mean(elementwise: Tensor, missing: Tensor) -> Tensor:
    """Mean of `elementwise` (rows x outputs) over the rows not `missing`; 0 with a graph
    when every row is missing. No host sync."""
    keep = (~missing).unsqueeze(-1).to(elementwise.dtype)
    count = keep.sum() * elementwise.shape[-1]
    return (elementwise * keep).sum() / count.clamp(min=1)
