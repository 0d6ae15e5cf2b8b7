"""What the dense kinds (segmentation, depth, normals) share: per-pixel labels read from
arrays, a convolutional head, the resolution check and the augmentation rules.

Labels are one array per row: a `.npy` file path in the label column (the layout of the
preprocessed NYUv2 / Cityscapes folders the MTAN, Nash-MTL and LibMTL code read) or the
array itself. Maps are H x W (segmentation), H x W or H x W x 1 (depth), H x W x 3
(normals); channel-first arrays (C x H x W) are accepted too. Every row of a split must
have the same size. A missing cell is a map with no valid pixel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from polytask.errors import ConfigError, DataError
from polytask.models.segnet import init_like_mtan
from polytask.tasks.kinds.base import TaskKind, is_missing

Head = Literal["mtan", "conv1x1"]


class DenseOptions(BaseModel):
    """Options every dense kind takes."""

    model_config = ConfigDict(extra="forbid")

    head: Head = Field(
        "mtan", description="The task's head over the dense features: 'mtan' (3x3 conv then "
        "1x1 conv to the outputs, the MTAN / Nash-MTL / LibMTL SegNet head) or 'conv1x1'.")


def conv_head(head: Head, channels: int, outputs: int) -> nn.Module:
    """The head of a dense task: MTAN's (3x3 conv, 1x1 conv) or a single 1x1 conv."""
    if head == "conv1x1":
        module: nn.Module = nn.Conv2d(channels, outputs, kernel_size=1)
    else:
        module = nn.Sequential(nn.Conv2d(channels, channels, kernel_size=3, padding=1),
                               nn.Conv2d(channels, outputs, kernel_size=1))
    init_like_mtan(module)
    return module


def read_map(cell: Any, where: str) -> np.ndarray | None:
    """The array of one label cell (a `.npy` path or an array); None for a missing cell."""
    if isinstance(cell, str | Path):
        path = Path(cell)
        if not path.is_file():
            raise DataError(f"{where}: label file {str(path)!r} does not exist; check the "
                            "label column's paths (relative paths are read from the current "
                            "folder).")
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise DataError(f"{where}: cannot read label file {str(path)!r} as a .npy array: "
                            f"{error}") from None
    if isinstance(cell, np.ndarray | list | tuple):
        return np.asarray(cell)
    if is_missing(cell):
        return None
    raise DataError(f"{where}: a dense label must be a .npy file path or an array, got "
                    f"{type(cell).__name__} {cell!r}")


def channels_first(array: np.ndarray, channels: int, where: str) -> np.ndarray:
    """`array` as C x H x W with C = `channels` (from H x W when C is 1, or H x W x C)."""
    if array.ndim == 2 and channels == 1:
        return array[None]
    if array.ndim == 3 and array.shape[-1] == channels:
        return np.moveaxis(array, -1, 0)
    if array.ndim == 3 and array.shape[0] == channels:
        return array
    wanted = "H x W, H x W x 1 or 1 x H x W" if channels == 1 else (
        f"H x W x {channels} or {channels} x H x W")
    raise DataError(f"{where}: a label map has shape {array.shape}; expected {wanted}")


class DenseKind(TaskKind):
    """A per-pixel task: level "dense" (the backbone returns B x C x H x W maps)."""

    level = "dense"
    Options: ClassVar[type[BaseModel]] = DenseOptions
    #: Label channels (0: a map of class ids, H x W).
    channels: ClassVar[int]

    def build_head(self, input_dim: int) -> nn.Module:
        return conv_head(self.options.head, input_dim, self.num_outputs)

    def _maps(self, frame: pd.DataFrame, split: str, missing: float) -> np.ndarray:
        """The label maps of every row, N x H x W (class ids) or N x C x H x W."""
        where = f"tasks.{self.task.name} ({split} split)"
        column = self._column(frame)
        arrays = [read_map(cell, f"{where}, row {i}") for i, cell in enumerate(column)]
        shaped = [None if a is None else self._shaped(a, f"{where}, row {i}")
                  for i, a in enumerate(arrays)]
        present = [a for a in shaped if a is not None]
        if not present:
            raise DataError(f"{where}: no row has a label map in column "
                            f"{self.task.label_columns[0]!r}")
        shape = present[0].shape
        for i, array in enumerate(shaped):
            if array is not None and array.shape != shape:
                raise DataError(f"{where}: the label map of row {i} has shape {array.shape}, "
                                f"the first one {shape}; every map of a split must have the "
                                "same size (resize them when preparing the data)")
        blank = np.full(shape, missing, dtype=np.float32)
        return np.stack([blank if a is None else a for a in shaped])

    def _shaped(self, array: np.ndarray, where: str) -> np.ndarray:
        """One label map as float32, C x H x W (H x W for class ids)."""
        if not np.issubdtype(array.dtype, np.number):
            raise DataError(f"{where}: a label map holds {array.dtype} values; expected numbers")
        array = array.astype(np.float32, copy=False)
        if self.channels == 0:
            if array.ndim != 2:
                raise DataError(f"{where}: a segmentation map has shape {array.shape}; "
                                "expected H x W class ids")
            return array
        return channels_first(array, self.channels, where)

    def check_resolution(self, outputs: Tensor, labels: Tensor) -> None:
        """The head's maps and the labels cover the same pixels."""
        if outputs.shape[-2:] != labels.shape[-2:]:
            raise ConfigError(
                f"tasks.{self.task.name}: the model's dense maps are "
                f"{tuple(outputs.shape[-2:])} but the label maps are "
                f"{tuple(labels.shape[-2:])}; use a backbone that returns maps at the input "
                "resolution (model.backbone.type: segnet) and labels of the images' size.")

    def state(self) -> dict[str, Any]:
        return {"labels": self.label_names}

    def decode(self, predictions: Tensor) -> list[Any]:
        return [row.tolist() for row in predictions]


def as_tensor(maps: np.ndarray, dtype: torch.dtype) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(maps)).to(dtype)
