"""Depth estimation: a depth per pixel, L1 on the valid pixels; absolute and relative error,
computed as the MTAN / Nash-MTL / LibMTL NYUv2 code computes them.

A pixel is valid where its true depth is non-zero (the reference code's
``binary_mask = sum(depth, dim=1) != 0``); a NaN depth counts as 0. With V the valid
pixels, d the true and p the predicted depth:

    loss    = Σ_V |p - d| / |V|            (over the batch)
    abs_err = Σ_V |p - d| / |V|            (over the split)
    rel_err = Σ_V |p - d| / d / |V|        (over the split)

The metrics pool every valid pixel of the split, as LibMTL's ``DepthMetric`` does (it
weights each batch's mean by its valid-pixel count). Nash-MTL's trainer instead averages
the per-batch means of its test batches (2 images each) with equal weights, which weighs
the pixels of images with fewer valid pixels slightly more.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from polytask.tasks.kinds._dense import DenseKind, as_tensor
from polytask.tasks.kinds.base import TASK_KINDS


def depth_scores(predictions: Tensor, labels: Tensor) -> dict[str, float]:
    """abs_err and rel_err over the valid (non-zero) pixels; see the module docstring."""
    valid = labels != 0
    count = int(valid.sum())
    if not count:
        raise ValueError("depth metrics: no valid (non-zero) depth in the split")
    truth = labels[valid].double()
    error = (predictions[valid].double() - truth).abs()
    return {"abs_err": float(error.sum() / count), "rel_err": float((error / truth).sum() / count)}


@TASK_KINDS.register("depth", paper="Depth estimation (L1 on valid pixels; absolute and "
                     "relative error)")
class Depth(DenseKind):
    """A depth per pixel; labels are H x W (or H x W x 1) maps, 0 where depth is unknown."""

    default_metric = "abs_err"
    metric_names = ("abs_err", "rel_err")
    channels = 1

    def fit(self, train: pd.DataFrame) -> None:
        del train
        self.label_names = list(self.task.label_columns)

    @property
    def num_outputs(self) -> int:
        return 1

    def encode(self, frame: pd.DataFrame, split: str) -> Tensor:
        maps = self._maps(frame, split, missing=0.0)
        return as_tensor(np.nan_to_num(maps, nan=0.0), torch.float32)

    def loss(self, outputs: Tensor, labels: Tensor) -> Tensor:
        self.check_resolution(outputs, labels)
        valid = (labels != 0).to(outputs.dtype)
        return ((outputs - labels).abs() * valid).sum() / valid.sum().clamp(min=1)

    def predict(self, outputs: Tensor) -> Tensor:
        return outputs.detach().float()

    def metrics(self, predictions: Tensor, labels: Tensor) -> dict[str, float]:
        return depth_scores(predictions, labels)
