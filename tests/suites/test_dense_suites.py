"""The dense suites: `shapes` trains SegNet / MTAN end to end; the nyuv2, cityscapes and
celeba loaders read tiny synthetic folders of the official layouts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from polytask import Trainer, load_config
from polytask.errors import DataError
from polytask.suites import load_suite


def _train(tmp_path: Path, suite: dict[str, Any], architecture: str, balancer: str,
           steps: int) -> dict[str, Any]:
    config = load_config({
        "suite": suite, "model": {"architecture": architecture}, "balancer": balancer,
        "train": {"max_steps": steps, "batch_size": 4, "lr": 3e-3, "eval_every": steps,
                  "progress": False, "warmup_ratio": 0.0}})
    return Trainer(config, tmp_path / f"{architecture}-{balancer}").fit()


@pytest.mark.parametrize(("architecture", "balancer"), [("hard_sharing", "pcgrad"),
                                                        ("mtan", "ew")])
def test_shapes_trains_every_dense_kind(tmp_path: Path, architecture: str,
                                        balancer: str) -> None:
    suite = {"name": "shapes", "train_size": 24, "eval_size": 8, "width": 8}
    results = _train(tmp_path, suite, architecture, balancer, steps=20)
    tasks = results["tasks"]
    assert set(tasks) == {"segmentation", "depth", "normals"}
    assert results["architecture"] == architecture
    # An untrained net predicts depth ~0 (error ~ the mean depth, about 3) and random
    # classes; 20 steps get well below and above that.
    assert tasks["depth"]["metrics"]["abs_err"] < 2.5
    assert tasks["segmentation"]["metrics"]["pixel_accuracy"] > 0.5
    assert 0 < tasks["normals"]["metrics"]["mean_angle"] < 90


def _npy_folder(root: Path, split: str, parts: dict[str, tuple[int, ...]], count: int,
                classes: int) -> None:
    rng = np.random.default_rng(len(split))
    for part, shape in parts.items():
        folder = root / split / part
        folder.mkdir(parents=True)
        for i in range(count):
            if part.startswith("label"):
                array = rng.integers(-1, classes, size=shape).astype(np.float32)
            elif part == "normal":
                array = rng.normal(size=shape)
                array /= np.linalg.norm(array, axis=-1, keepdims=True)
            else:
                array = rng.random(shape).astype(np.float32)
            np.save(folder / f"{i}.npy", array)


def nyuv2_folder(root: Path, size: tuple[int, int] = (32, 32)) -> Path:
    parts = {"image": (*size, 3), "label": size, "depth": (*size, 1), "normal": (*size, 3)}
    for split, count in (("train", 4), ("val", 2)):
        _npy_folder(root, split, parts, count, classes=13)
    return root


def test_nyuv2_reads_the_preprocessed_layout_and_trains(tmp_path: Path) -> None:
    root = nyuv2_folder(tmp_path / "nyuv2")
    suite = load_suite("nyuv2", path=str(root), width=4)
    assert suite.task_names == ["segmentation", "depth", "normals"]
    assert suite.data is not None
    assert [len(suite.data[s]) for s in ("train", "validation", "test")] == [4, 2, 2]
    assert suite.data["train"]["depth"][3].endswith("train/depth/3.npy")
    results = _train(tmp_path, {"name": "nyuv2", "path": str(root), "width": 4}, "mtan",
                     "ew", steps=2)
    assert set(results["tasks"]) == {"segmentation", "depth", "normals"}


def test_cityscapes_reads_7_and_19_class_labels(tmp_path: Path) -> None:
    root = tmp_path / "cityscapes"
    size = (32, 64)
    parts = {"image": (*size, 3), "label_7": size, "label_19": size, "depth": (*size, 1)}
    for split in ("train", "val"):
        _npy_folder(root, split, parts, 3, classes=7)
    seven = load_suite("cityscapes", path=str(root))
    assert seven.task_names == ["segmentation", "depth"]
    assert seven.task("segmentation").options == {"num_classes": 7}
    assert seven.data is not None and "label_7" in seven.data["train"]["segmentation"][0]
    nineteen = load_suite("cityscapes", path=str(root), classes=19)
    assert nineteen.data is not None and "label_19" in nineteen.data["test"]["segmentation"][0]
    (root / "train" / "label_7").rename(root / "train" / "label")  # LibMTL's folder name
    (root / "val" / "label_7").rename(root / "val" / "label")
    libmtl = load_suite("cityscapes", path=str(root))
    assert libmtl.data is not None and "/label/" in libmtl.data["train"]["segmentation"][0]


def test_celeba_reads_the_official_attribute_and_partition_files(tmp_path: Path) -> None:
    root = tmp_path / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    names = ["Smiling", "Young", "Male"]
    rows = [f"{i:06d}.jpg " + " ".join("1" if (i + j) % 2 else "-1" for j in range(3))
            for i in range(1, 7)]
    (root / "list_attr_celeba.txt").write_text("\n".join(["6", " ".join(names), *rows]) + "\n")
    (root / "list_eval_partition.txt").write_text(
        "\n".join(f"{i:06d}.jpg {[0, 0, 0, 1, 2, 2][i - 1]}" for i in range(1, 7)) + "\n")
    for i in range(1, 7):
        Image.new("RGB", (8, 8), (i * 30, 0, 0)).save(root / "img_align_celeba" / f"{i:06d}.jpg")
    suite = load_suite("celeba", path=str(root))
    assert suite.task_names == names
    assert suite.data is not None
    assert [len(suite.data[s]) for s in ("train", "validation", "test")] == [3, 1, 2]
    assert suite.data["train"]["Smiling"].tolist() == ["1", "0", "1"]  # -1 is "0"
    assert Path(suite.data["test"]["image"][0]).name == "000005.jpg"
    (root / "list_eval_partition.txt").unlink()  # without the official split: carved
    carved = load_suite("celeba", path=str(root), eval_size=1)
    assert carved.data is not None and len(carved.data["train"]) == 4


@pytest.mark.parametrize("name", ["nyuv2", "cityscapes", "celeba"])
def test_a_missing_folder_is_named(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "not-here"
    with pytest.raises(DataError, match=f"data folder '{missing}' does not exist"):
        load_suite(name, path=str(missing))
    with pytest.raises(DataError, match=r"pass its path, e\.g\. suite: \{name: "):
        load_suite(name)


def test_an_incomplete_nyuv2_folder_names_the_missing_part(tmp_path: Path) -> None:
    root = nyuv2_folder(tmp_path / "nyuv2")
    (root / "val" / "normal" / "1.npy").unlink()
    with pytest.raises(DataError, match=r"val/normal' holds 1 files and .*val/image' 2"):
        load_suite("nyuv2", path=str(root))
