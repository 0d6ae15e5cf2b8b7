"""Surface normals: a unit vector per pixel, 1 - cosine on the valid pixels; angle error
statistics, computed as the MTAN / Nash-MTL / LibMTL NYUv2 code computes them.

The head's 3 outputs per pixel are normalised to unit length (p = out / ||out||, as the
Nash-MTL SegNet and LibMTL do). A pixel is valid where its true normal n is non-zero
(``sum(normal, dim=1) != 0`` in the reference code). With V the valid pixels:

    loss    = 1 - Σ_V <p, n> / |V|                 (over the batch)
    angle   = degrees(arccos(clamp(<p, n>, -1, 1)))  per valid pixel of the split
    mean_angle, median_angle = mean and median of the angles
    within_11_25, within_22_5, within_30 = share of angles < 11.25, 22.5, 30 degrees

The statistics pool every valid pixel of the split, as LibMTL's ``NormalMetric`` does
(Nash-MTL's trainer averages them per test batch of 2 images, which moves the median a
little). Shares are fractions in [0, 1], as the reference code reports them.

A horizontal flip negates the x component, as the CAGrad / Nash-MTL augmentation does.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from polytask.tasks.kinds._dense import DenseKind, as_tensor
from polytask.tasks.kinds.base import TASK_KINDS

THRESHOLDS = {"within_11_25": 11.25, "within_22_5": 22.5, "within_30": 30.0}


def normal_scores(predictions: Tensor, labels: Tensor) -> dict[str, float]:
    """Angle statistics over the valid pixels (see the module docstring); `predictions` are
    unit normals, both N x 3 x H x W."""
    cosines = [(prediction * label).sum(dim=0)[label.sum(dim=0) != 0]  # image by image
               for prediction, label in zip(predictions, labels, strict=True)]
    cosine = torch.cat(cosines) if cosines else torch.empty(0)
    if not cosine.numel():
        raise ValueError("normal metrics: no valid (non-zero) normal in the split")
    angles = np.degrees(torch.acos(cosine.clamp(-1, 1)).numpy())
    scores = {"mean_angle": float(np.mean(angles)), "median_angle": float(np.median(angles))}
    scores.update({name: float(np.mean(angles < limit)) for name, limit in THRESHOLDS.items()})
    return scores


@TASK_KINDS.register("normals", paper="Surface normal estimation (1 - cosine on valid pixels; "
                     "angle error statistics)")
class Normals(DenseKind):
    """A unit normal per pixel; labels are H x W x 3 maps, 0 where the normal is unknown."""

    default_metric = "mean_angle"
    metric_names = ("mean_angle", "median_angle", *THRESHOLDS)
    channels = 3
    flip_negate_channel = 0

    def fit(self, train: pd.DataFrame) -> None:
        del train
        self.label_names = ["x", "y", "z"]

    def encode(self, frame: pd.DataFrame, split: str) -> Tensor:
        maps = self._maps(frame, split, missing=0.0)
        return as_tensor(np.nan_to_num(maps, nan=0.0), torch.float32)

    def loss(self, outputs: Tensor, labels: Tensor) -> Tensor:
        self.check_resolution(outputs, labels)
        valid = (labels.sum(dim=1, keepdim=True) != 0).to(outputs.dtype)
        cosine = (F.normalize(outputs, dim=1) * labels * valid).sum()
        return 1 - cosine / valid.sum().clamp(min=1)

    def predict(self, outputs: Tensor) -> Tensor:
        return F.normalize(outputs.detach().float(), dim=1)

    def metrics(self, predictions: Tensor, labels: Tensor) -> dict[str, float]:
        return normal_scores(predictions, labels)
