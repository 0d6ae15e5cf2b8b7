"""Semantic segmentation: a class per pixel, cross-entropy with an ignore index; mIoU and
pixel accuracy, computed as the MTAN / Nash-MTL / LibMTL NYUv2 code computes them.

Loss (Nash-MTL's ``F.nll_loss(log_softmax(out), y, ignore_index=-1)``): the mean over the
labelled pixels of the batch of ``-log softmax(out)[y]``.

Metrics, from one confusion matrix ``h`` (h[true, predicted] = pixel count) accumulated
over every labelled pixel of the split (Nash-MTL's ``ConfMatrix``, LibMTL's ``SegMetric``):

    pixel_accuracy = Σ_c h[c, c] / Σ h
    IoU_c          = h[c, c] / (Σ_k h[c, k] + Σ_k h[k, c] - h[c, c])
    miou           = mean over classes c of IoU_c

A class absent from both the labels and the predictions of the split (IoU 0/0) is left
out of the mean; the reference code would return NaN there (on the NYUv2 and Cityscapes
validation splits every class occurs, so the numbers agree).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from polytask.errors import ConfigError, DataError
from polytask.tasks.kinds._dense import DenseKind, DenseOptions, as_tensor
from polytask.tasks.kinds.base import IGNORE, TASK_KINDS


class SegmentationOptions(DenseOptions):
    """Options of a segmentation task."""

    num_classes: int | None = Field(
        None, ge=2, description="Number of classes (ids 0..num_classes-1); needed unless "
        "the task lists its class names in `labels`.")
    ignore_index: int = Field(
        -1, description="The label value of unlabelled pixels (-1 in the preprocessed "
        "NYUv2 and Cityscapes files): excluded from the loss and the metrics.")


def confusion_matrix(predictions: Tensor, labels: Tensor, num_classes: int) -> np.ndarray:
    """h[true, predicted] pixel counts over the labelled pixels (0 <= label < C), one image
    at a time so that memory stays small."""
    total = torch.zeros(num_classes * num_classes, dtype=torch.int64)
    for prediction, label in zip(predictions, labels, strict=True):
        label = label.reshape(-1).long()
        keep = (label >= 0) & (label < num_classes)
        index = num_classes * label[keep] + prediction.reshape(-1).long()[keep]
        total += torch.bincount(index, minlength=num_classes * num_classes)
    return total.reshape(num_classes, num_classes).numpy()


def segmentation_scores(confusion: np.ndarray) -> dict[str, float]:
    """miou and pixel_accuracy of a confusion matrix (see the module docstring)."""
    h = confusion.astype(np.float64)
    if h.sum() == 0:
        raise ValueError("segmentation metrics: no labelled pixel in the split")
    diagonal = np.diag(h)
    union = h.sum(axis=1) + h.sum(axis=0) - diagonal
    present = union > 0
    return {"miou": float(np.mean(diagonal[present] / union[present])),
            "pixel_accuracy": float(diagonal.sum() / h.sum())}


@TASK_KINDS.register("segmentation", paper="Semantic segmentation (per-pixel cross-entropy; "
                     "mIoU, pixel accuracy)")
class Segmentation(DenseKind):
    """A class id per pixel; labels are H x W maps of ids (`ignore_index` = unlabelled)."""

    default_metric = "miou"
    metric_names = ("miou", "pixel_accuracy")
    Options = SegmentationOptions
    channels = 0
    augment_fill = float(IGNORE)

    def fit(self, train: pd.DataFrame) -> None:
        del train
        if self.task.labels is not None:
            self.label_names = list(self.task.labels)
        elif self.options.num_classes is not None:
            self.label_names = [str(i) for i in range(self.options.num_classes)]
        else:
            raise ConfigError(f"tasks.{self.task.name}.options.num_classes: required for a "
                              "segmentation task (e.g. 13 for NYUv2), unless the task lists "
                              "its class names in `labels`")
        count = self.options.num_classes
        if count is not None and count != len(self.label_names):
            raise ConfigError(f"tasks.{self.task.name}: options.num_classes is {count} but "
                              f"`labels` names {len(self.label_names)} classes; make them agree")

    def encode(self, frame: pd.DataFrame, split: str) -> Tensor:
        maps = self._maps(frame, split, missing=float(IGNORE))
        maps[maps == self.options.ignore_index] = IGNORE
        labelled = maps[maps != IGNORE]
        bad = labelled[(labelled < 0) | (labelled >= self.num_outputs)
                       | (labelled != np.round(labelled))]
        if bad.size:
            raise DataError(
                f"tasks.{self.task.name} ({split} split): a label map holds {bad[0]:g}, not a "
                f"class id in [0, {self.num_outputs}) nor the ignore index "
                f"{self.options.ignore_index}; set options.num_classes or "
                "options.ignore_index to match the data")
        return as_tensor(maps, torch.int16)

    def loss(self, outputs: Tensor, labels: Tensor) -> Tensor:
        self.check_resolution(outputs, labels)
        targets = labels.long()
        total = F.cross_entropy(outputs, targets, ignore_index=IGNORE, reduction="sum")
        return total / (targets != IGNORE).sum().clamp(min=1)

    def predict(self, outputs: Tensor) -> Tensor:
        return outputs.detach().argmax(dim=1).to(torch.int16)

    def metrics(self, predictions: Tensor, labels: Tensor) -> dict[str, float]:
        return segmentation_scores(confusion_matrix(predictions, labels, self.num_outputs))
