"""Image inputs: decode once, cache as uint8, augment per batch in torch.

`ImageInputs` is the input encoder of the image backbones (`model.backbone.type: torchvision`,
`timm`, `lenet`, ...). A task's single input column holds, per row, one of:

- a path to an image file (PNG, JPEG, ... read with Pillow) or to a `.npy` array, relative
  to `model.backbone.image.root` (default: the current directory);
- the encoded bytes of an image file, or a `{"bytes", "path"}` mapping (what a `datasets`
  image folder or a Hugging Face Parquet image column holds);
- an array (H x W, H x W x C or C x H x W; nested lists as Parquet stores them): from an
  in-memory table, an `.npz` data file or a Parquet list column.

Every image becomes a C x H x W uint8 array (3-D arrays are channels-last when their last
dimension is 1, 3 or 4 and their first is not; float arrays are read as [0, 1] when no value
exceeds 1, else as [0, 255]); the stacked N x C x H x W tensor is cached on disk, keyed by
the cells (paths by their size and modification time) and the decoding settings, so a
second run skips decoding. Encoded inputs are ``{"image": uint8 tensor}``; the backbone's
`ImageNormalize` turns them into floats, so evaluation and prediction need nothing else.

Augmentation (`augment_batch`) is applied to training batches only, per batch and
vectorised: one random crop offset and flip per image, drawn from a generator the batch
stream seeds from the batch's position (so a resumed run sees the same augmented batches),
applied identically to the image and to every dense label of the batch.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from polytask.errors import ConfigError, DataError
from polytask.models.inputs import Encoded, cached_tensors
from polytask.models.spec import AugmentSpec, ImageSpec

IMAGE_KEY = "image"
#: Luminance weights (ITU-R BT.601) for RGB -> grey.
_GREY = np.array([0.299, 0.587, 0.114], dtype=np.float32)
#: (inputs, {task: labels}, generator) -> the augmented (inputs, labels).
BatchTransform = Callable[[Encoded, dict[str, Tensor], torch.Generator],
                          tuple[Encoded, dict[str, Tensor]]]


# --------------------------------------------------------------------------- decoding


def _channels_first(array: np.ndarray, where: str) -> np.ndarray:
    """A 2-D or 3-D image array as C x H x W."""
    if array.ndim == 2:
        return array[None]
    if array.ndim != 3:
        raise DataError(f"{where}: an image must be 2-D (H x W) or 3-D (H x W x C or "
                        f"C x H x W); got an array of shape {array.shape}")
    if array.shape[-1] in (1, 3, 4) and array.shape[0] not in (1, 3, 4):
        return np.moveaxis(array, -1, 0)
    return array


def _nested_array(cell: Any) -> np.ndarray:
    """An array from nested lists or an object array of arrays (a Parquet list column)."""
    if isinstance(cell, np.ndarray) and cell.dtype != object:
        return cell
    if isinstance(cell, np.ndarray | list | tuple) and len(cell) and not np.isscalar(cell[0]):
        return np.stack([_nested_array(c) for c in cell])
    return np.asarray(cell)


def _read_image_file(path: Path) -> np.ndarray:
    """An image file (Pillow) or a `.npy` array, channels last for Pillow images."""
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB") if image.mode not in ("L", "RGB", "RGBA")
                          else image)


def _decode_bytes(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB") if image.mode not in ("L", "RGB", "RGBA")
                          else image)


def _resolve(path: str | Path, root: str | None) -> Path:
    resolved = Path(path).expanduser()
    return resolved if resolved.is_absolute() or root is None else Path(root) / resolved


def decode_cell(cell: Any, root: str | None, where: str) -> np.ndarray:
    """One cell of an image column as a C x H x W array (its own dtype)."""
    if isinstance(cell, Mapping):
        cell = cell.get("bytes") or cell.get("path")
    if isinstance(cell, str | Path):
        path = _resolve(cell, root)
        if not path.is_file():
            raise DataError(f"{where}: image file {str(path)!r} does not exist; fix the path, "
                            "or set model.backbone.image.root to the folder the paths are "
                            "relative to")
        try:
            return _channels_first(_read_image_file(path), f"{where} ({path})")
        except (OSError, ValueError) as error:
            raise DataError(f"{where}: cannot read image {str(path)!r}: {error}") from None
    if isinstance(cell, bytes | bytearray):
        try:
            return _channels_first(_decode_bytes(bytes(cell)), where)
        except OSError as error:
            raise DataError(f"{where}: the bytes are not an image file: {error}") from None
    if cell is None or (isinstance(cell, float) and cell != cell):
        raise DataError(f"{where}: the image is missing; drop the row or fill it in")
    if hasattr(cell, "mode") and hasattr(cell, "size"):  # a PIL image
        return _channels_first(np.asarray(cell), where)
    try:
        array = _nested_array(cell)
    except ValueError as error:
        raise DataError(f"{where}: cannot read {type(cell).__name__} as an image: {error}"
                        ) from None
    if not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
        raise DataError(f"{where}: cannot read a {type(cell).__name__} of {array.dtype} as an "
                        "image; give a path, image bytes or a numeric array")
    return _channels_first(array, where)


def _convert_channels(image: np.ndarray, channels: int | None) -> np.ndarray:
    """Drop an alpha channel; with `channels` set, convert grey <-> RGB."""
    if image.shape[0] == 4:
        image = image[:3]
    if channels is None or image.shape[0] == channels:
        return image
    if channels == 3 and image.shape[0] == 1:
        return np.repeat(image, 3, axis=0)
    if channels == 1 and image.shape[0] == 3:
        return np.tensordot(_GREY, image.astype(np.float32), axes=1)[None]
    return image


def _resize(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or tuple(image.shape[1:]) == tuple(size):
        return image
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    return F.interpolate(tensor, size=size, mode="bilinear", antialias=True,
                         align_corners=False)[0].numpy()


def to_uint8(images: np.ndarray, was_float: bool) -> np.ndarray:
    """Pixels as uint8: floats in [0, 1] (all of them) are scaled by 255, others rounded
    and clipped to [0, 255]."""
    if images.dtype == np.uint8:
        return images
    values = images.astype(np.float32)
    if was_float and values.size and float(values.max()) <= 1.0:
        values = values * 255.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _check_same_shape(images: Sequence[np.ndarray], where: str) -> None:
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        first, second = sorted(shapes)[:2]
        raise DataError(
            f"{where}: the images differ in shape (C x H x W {first} and {second}, ...); set "
            "model.backbone.image.size: [height, width] to resize them and "
            "model.backbone.image.channels: 1 or 3 to convert them")


def _cell_key(cell: Any, root: str | None) -> Any:
    """What identifies a cell in the cache key: a path by its size and mtime."""
    if isinstance(cell, Mapping):
        cell = cell.get("bytes") or cell.get("path")
    if isinstance(cell, str | Path):
        path = _resolve(cell, root)
        try:
            stat = path.stat()
        except OSError:
            return str(path)
        return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    if isinstance(cell, bytes | bytearray):
        return hashlib.sha256(cell).hexdigest()
    return hashlib.sha256(_nested_array(cell).tobytes()).hexdigest() if cell is not None else ""


def _stackable(cells: Sequence[Any]) -> bool:
    """Every cell is a numeric ndarray of one shape: stacked at once, no per-cell work."""
    first = cells[0] if len(cells) else None
    return (isinstance(first, np.ndarray) and first.dtype != object
            and all(isinstance(c, np.ndarray) and c.shape == first.shape
                    and c.dtype == first.dtype for c in cells))


# --------------------------------------------------------------------------- the encoder


class ImageInputs:
    """Decodes one image column into a cached N x C x H x W uint8 tensor (see the module
    docstring for the cell forms). `fit` reads the first training image to learn the
    channel count and size the backbone is built for."""

    name = "images"

    def __init__(self, spec: ImageSpec | None = None) -> None:
        self.spec = spec or ImageSpec()
        self.channels: int | None = self.spec.channels
        self.size: tuple[int, int] | None = self.spec.size

    def fit(self, train: pd.DataFrame, columns: list[str]) -> None:
        """Check the input is one column and learn (C, H, W) from its first image."""
        column = self._column(columns)
        if column not in train.columns:
            raise DataError(f"input column {column!r} is missing; found {list(train.columns)}")
        if len(train) == 0:
            return
        image = self._decode(train[column].iloc[0], f"column {column!r}, row 0")
        self.channels, self.size = int(image.shape[0]), (int(image.shape[1]),
                                                          int(image.shape[2]))

    @staticmethod
    def _column(columns: list[str]) -> str:
        if len(columns) != 1:
            raise ConfigError(f"an image backbone reads one image column, got input {columns}; "
                              "list the column that holds the images (paths, bytes or arrays)")
        return columns[0]

    def state(self) -> dict[str, Any]:
        return {"spec": self.spec.model_dump(mode="json"), "channels": self.channels,
                "size": list(self.size) if self.size else None}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.spec = ImageSpec.model_validate(state["spec"])
        self.channels = state["channels"]
        self.size = tuple(state["size"]) if state["size"] else None  # type: ignore[assignment]

    def _decode(self, cell: Any, where: str) -> np.ndarray:
        image = decode_cell(cell, self.spec.root, where)
        return _resize(_convert_channels(image, self.spec.channels), self.spec.size)

    def encode(self, frame: pd.DataFrame, columns: list[str], words: bool = False) -> Encoded:
        """``{"image": N x C x H x W uint8}``: stacked at once from same-shape arrays,
        otherwise decoded per image once and cached on disk."""
        if words:
            raise DataError("token classification needs a text backbone (model.backbone.type: hf)")
        column = self._column(columns)
        if column not in frame.columns:
            raise DataError(f"input column {column!r} is missing; found {list(frame.columns)}")
        cells = frame[column].tolist()
        if _stackable(cells) and self._plain(cells[0]):
            images = to_uint8(np.stack(cells), np.issubdtype(cells[0].dtype, np.floating))
            return {IMAGE_KEY: torch.from_numpy(self._as_batch(images))}
        settings = self.spec.model_dump(mode="json", exclude={"augment", "mean", "std"})
        hasher = hashlib.sha256(repr(settings).encode())
        for cell in cells:
            hasher.update(str(_cell_key(cell, self.spec.root)).encode())
        return cached_tensors("images", hasher.hexdigest()[:24],
                              lambda: self._decode_all(cells, column))

    def _plain(self, first: np.ndarray) -> bool:
        """Arrays that need no per-image conversion (channels, size) before stacking."""
        image = _channels_first(first, "image")
        return ((self.spec.channels is None or image.shape[0] == self.spec.channels)
                and image.shape[0] != 4
                and (self.spec.size is None or tuple(image.shape[1:]) == tuple(self.spec.size)))

    @staticmethod
    def _as_batch(images: np.ndarray) -> np.ndarray:
        """N x C x H x W from a stack of same-layout images."""
        if images.ndim == 3:
            return np.ascontiguousarray(images[:, None])
        if images.shape[-1] in (1, 3, 4) and images.shape[1] not in (1, 3, 4):
            return np.ascontiguousarray(np.moveaxis(images, -1, 1))
        return np.ascontiguousarray(images)

    def _decode_all(self, cells: Sequence[Any], column: str) -> Encoded:
        decoded, was_float = [], False
        for row, cell in enumerate(cells):
            image = decode_cell(cell, self.spec.root, f"column {column!r}, row {row}")
            was_float = was_float or np.issubdtype(image.dtype, np.floating)
            decoded.append(_resize(_convert_channels(image, self.spec.channels), self.spec.size))
        if not decoded:
            channels, (height, width) = self.channels or 1, self.size or (1, 1)
            return {IMAGE_KEY: torch.zeros(0, channels, height, width, dtype=torch.uint8)}
        _check_same_shape(decoded, f"column {column!r}")
        return {IMAGE_KEY: torch.from_numpy(to_uint8(np.stack(decoded), was_float))}

    def normalizer(self) -> ImageNormalize:
        """The module that turns the encoded uint8 images into the backbone's float input."""
        return ImageNormalize(self.spec.mean, self.spec.std, self.channels)

    def batch_transform(self, label_fill: Mapping[str, float] | None = None,
                        flip_negate: Mapping[str, int] | None = None) -> BatchTransform | None:
        """The training-batch augmentation, or None when the config asks for none.

        `label_fill`: per task, the value padding gives a dense label (e.g. the ignore
        index of a segmentation map; default 0). `flip_negate`: per task, the channel of a
        dense label whose sign a horizontal flip reverses (the x component of normals)."""
        augment = self.spec.augment
        if not augment.crop_padding and not augment.flip:
            return None

        def transform(inputs: Encoded, labels: dict[str, Tensor],
                      generator: torch.Generator) -> tuple[Encoded, dict[str, Tensor]]:
            images, labels = augment_batch(inputs[IMAGE_KEY], labels, augment, generator,
                                           label_fill, flip_negate)
            return {**inputs, IMAGE_KEY: images}, labels

        return transform


class ImageNormalize(nn.Module):
    """uint8 images -> float in [0, 1], then ``(x - mean) / std`` per channel when given.
    With `channels` = 3 it also repeats a grey image's channel (a model built for RGB)."""

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None,
                 channels: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        mean_t = torch.tensor(list(mean) if mean else [0.0]).view(1, -1, 1, 1)
        std_t = torch.tensor(list(std) if std else [1.0]).view(1, -1, 1, 1)
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if self.channels is not None and x.shape[1] == 1 and self.channels > 1:
            x = x.expand(-1, self.channels, -1, -1)
        return (x - self.mean) / self.std


# --------------------------------------------------------------------------- augmentation


def _is_dense(label: Tensor, height: int, width: int) -> bool:
    """A label with a value per pixel: B x H x W or B x C x H x W."""
    return label.dim() >= 3 and tuple(label.shape[-2:]) == (height, width)


def _crop(batch: Tensor, padding: int, top: Tensor, left: Tensor, fill: float) -> Tensor:
    """Pad each image of `batch` (B x ... x H x W) by `padding` and cut the H x W window at
    (top[b], left[b]): two gathers for the whole batch."""
    height, width = batch.shape[-2:]
    middle = tuple(batch.shape[1:-2])
    ones = (1,) * len(middle)
    padded = F.pad(batch, (padding, padding, padding, padding), value=fill)
    rows = (top.view(-1, 1) + torch.arange(height)).view(-1, *ones, height, 1)
    cols = (left.view(-1, 1) + torch.arange(width)).view(-1, *ones, 1, width)
    picked = padded.gather(-2, rows.expand(-1, *middle, height, width + 2 * padding))
    return picked.gather(-1, cols.expand(-1, *middle, height, width))


def _flip(batch: Tensor, flipped: Tensor, negate_channel: int | None = None) -> Tensor:
    shape = (-1, *([1] * (batch.dim() - 1)))
    out = torch.where(flipped.view(shape), batch.flip(-1), batch)
    if negate_channel is not None:
        sign = torch.ones(batch.shape[0], batch.shape[1], dtype=batch.dtype)
        sign[flipped, negate_channel] = -1
        out = out * sign.view(*sign.shape, *([1] * (batch.dim() - 2)))
    return out


def augment_batch(images: Tensor, labels: Mapping[str, Tensor], augment: AugmentSpec,
                  generator: torch.Generator, label_fill: Mapping[str, float] | None = None,
                  flip_negate: Mapping[str, int] | None = None,
                  ) -> tuple[Tensor, dict[str, Tensor]]:
    """Random crop (with padding) and horizontal flip of a batch (B x C x H x W, any dtype),
    drawn once per image from `generator` and applied identically to every dense label in
    `labels` (B x H x W or B x C x H x W, same H x W); other labels pass through unchanged.

    Padding fills images with 0 and a dense label with `label_fill[task]` (default 0);
    a flip negates channel `flip_negate[task]` of that task's label (surface normals' x)."""
    label_fill, flip_negate = label_fill or {}, flip_negate or {}
    count, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    dense = {t: label for t, label in labels.items() if _is_dense(label, height, width)}
    out_labels = dict(labels)
    if augment.crop_padding:
        span = 2 * augment.crop_padding + 1
        top = torch.randint(span, (count,), generator=generator)
        left = torch.randint(span, (count,), generator=generator)
        images = _crop(images, augment.crop_padding, top, left, 0)
        for task, label in dense.items():
            out_labels[task] = _crop(label, augment.crop_padding, top, left,
                                     label_fill.get(task, 0))
    if augment.flip:
        flipped = torch.rand(count, generator=generator) < 0.5
        images = _flip(images, flipped)
        for task in dense:
            out_labels[task] = _flip(out_labels[task], flipped, flip_negate.get(task))
    return images, out_labels
