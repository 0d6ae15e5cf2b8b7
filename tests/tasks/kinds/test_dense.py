"""Dense kinds: metric golden values against the MTAN / Nash-MTL / LibMTL formulas on
hand-made arrays, ignore and valid-pixel masks, label reading and losses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from polytask.errors import ConfigError, DataError
from polytask.tasks.kinds import IGNORE, TASK_KINDS, TaskKind
from polytask.tasks.metrics import higher_is_better
from polytask.tasks.spec import Task


def make(kind: str, **options: Any) -> TaskKind:
    task = Task(name="t", kind=kind, input="image", label="y", options=options)
    return TASK_KINDS.get(kind)(task)


# ------------------------------------------------------------------ reference formulas
# Written out as the Nash-MTL `ConfMatrix`, `depth_error` and LibMTL `NormalMetric` compute
# them, on the whole split at once.


def reference_segmentation(pred: np.ndarray, label: np.ndarray, n: int) -> tuple[float, float]:
    keep = (label >= 0) & (label < n)
    h = np.bincount(n * label[keep] + pred[keep], minlength=n * n).reshape(n, n).astype(float)
    iu = np.diag(h) / (h.sum(1) + h.sum(0) - np.diag(h))
    return float(np.mean(iu)), float(np.diag(h).sum() / h.sum())


def reference_depth(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    mask = gt.sum(axis=1, keepdims=True) != 0
    p, g = pred[mask], gt[mask]
    return float(np.abs(p - g).sum() / mask.sum()), float((np.abs(p - g) / g).sum() / mask.sum())


def reference_normals(pred: np.ndarray, gt: np.ndarray) -> list[float]:
    pred = pred / np.linalg.norm(pred, axis=1, keepdims=True)
    mask = gt.sum(axis=1) != 0
    error = np.degrees(np.arccos(np.clip((pred * gt).sum(axis=1)[mask], -1, 1)))
    return [np.mean(error), np.median(error), np.mean(error < 11.25), np.mean(error < 22.5),
            np.mean(error < 30)]


# ------------------------------------------------------------------ segmentation


def test_segmentation_metrics_match_the_confusion_matrix_formulas() -> None:
    kind = make("segmentation", num_classes=3)
    kind.fit(pd.DataFrame())
    label = np.array([[[0, 0, 1], [1, 2, -1]], [[2, 2, 0], [-1, 1, 1]]])
    pred = np.array([[[0, 1, 1], [1, 2, 0]], [[2, 0, 0], [2, 1, 2]]])
    stored = torch.from_numpy(np.where(label == -1, IGNORE, label))
    scores = kind.metrics(torch.from_numpy(pred), stored)
    miou, accuracy = reference_segmentation(pred.ravel(), label.ravel(), 3)
    assert scores["miou"] == pytest.approx(miou)
    assert scores["pixel_accuracy"] == pytest.approx(accuracy)
    # by hand: 10 labelled pixels, 7 right; IoU 2/4, 3/5, 2/4
    assert accuracy == pytest.approx(0.7)
    assert miou == pytest.approx((0.5 + 0.6 + 0.5) / 3)


def test_segmentation_skips_a_class_absent_from_labels_and_predictions() -> None:
    kind = make("segmentation", num_classes=4)
    kind.fit(pd.DataFrame())
    scores = kind.metrics(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 1]]]))
    assert scores == {"miou": 1.0, "pixel_accuracy": 1.0}


def test_segmentation_encodes_ignore_index_and_rejects_unknown_ids(tmp_path: Path) -> None:
    kind = make("segmentation", num_classes=3, ignore_index=255)
    kind.fit(pd.DataFrame())
    np.save(tmp_path / "0.npy", np.array([[0, 255], [2, 1]], dtype=np.float32))
    frame = pd.DataFrame({"y": [str(tmp_path / "0.npy"), None]})
    labels = kind.encode(frame, "train")
    assert labels.dtype == torch.int16
    assert labels[0].tolist() == [[0, IGNORE], [2, 1]]
    assert (labels[1] == IGNORE).all()  # a missing cell: nothing labelled
    with pytest.raises(DataError, match=r"holds 7, not a class id in \[0, 3\)"):
        kind.encode(pd.DataFrame({"y": [np.array([[7, 0]])]}), "train")


def test_segmentation_needs_a_class_count() -> None:
    with pytest.raises(ConfigError, match=r"tasks\.t\.options\.num_classes: required"):
        make("segmentation").fit(pd.DataFrame())


def test_segmentation_loss_is_cross_entropy_over_labelled_pixels() -> None:
    kind = make("segmentation", num_classes=3)
    kind.fit(pd.DataFrame())
    outputs = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(1))
    labels[0, 0] = IGNORE
    expected = F.nll_loss(F.log_softmax(outputs, 1), labels, ignore_index=IGNORE)
    assert kind.loss(outputs, labels.to(torch.int16)) == pytest.approx(float(expected))
    with pytest.raises(ConfigError, match=r"dense maps are \(2, 2\) but the label maps are"):
        kind.loss(outputs[..., :2, :2], labels)


# ------------------------------------------------------------------ depth


def test_depth_metrics_and_loss_use_only_non_zero_depths() -> None:
    kind = make("depth")
    kind.fit(pd.DataFrame())
    gt = np.array([[[[1.0, 2.0], [0.0, 4.0]]], [[[0.0, 0.0], [0.5, 1.0]]]], dtype=np.float32)
    pred = np.array([[[[1.5, 1.0], [9.0, 4.0]]], [[[7.0, 7.0], [1.0, 0.0]]]], dtype=np.float32)
    scores = kind.metrics(torch.from_numpy(pred), torch.from_numpy(gt))
    abs_err, rel_err = reference_depth(pred, gt)
    assert scores["abs_err"] == pytest.approx(abs_err)
    assert scores["rel_err"] == pytest.approx(rel_err)
    assert abs_err == pytest.approx((0.5 + 1 + 0 + 0.5 + 1) / 5)  # by hand
    loss = kind.loss(torch.from_numpy(pred), torch.from_numpy(gt))
    assert float(loss) == pytest.approx(abs_err)


def test_depth_reads_channel_last_and_channel_first_maps(tmp_path: Path) -> None:
    kind = make("depth")
    kind.fit(pd.DataFrame())
    np.save(tmp_path / "a.npy", np.ones((2, 3, 1)))
    frame = pd.DataFrame({"y": [str(tmp_path / "a.npy"), np.full((1, 2, 3), 2.0),
                                np.full((2, 3), np.nan)]})
    labels = kind.encode(frame, "train")
    assert labels.shape == (3, 1, 2, 3)
    assert labels[:, 0, 0, 0].tolist() == [1.0, 2.0, 0.0]  # NaN: no depth
    with pytest.raises(DataError, match=r"row 1 has shape \(1, 4, 4\), the first one"):
        kind.encode(pd.DataFrame({"y": [np.ones((2, 3)), np.ones((4, 4))]}), "train")
    with pytest.raises(DataError, match=r"label file .*nope\.npy' does not exist"):
        kind.encode(pd.DataFrame({"y": [str(tmp_path / "nope.npy")]}), "train")


# ------------------------------------------------------------------ normals


def _unit(array: np.ndarray) -> np.ndarray:
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def test_normal_metrics_match_the_reference_angle_statistics() -> None:
    rng = np.random.default_rng(0)
    gt = _unit(rng.normal(size=(3, 3, 5, 4))).astype(np.float32)
    gt[0, :, 0, :] = 0  # a row of pixels without normals
    pred = (gt + 0.4 * rng.normal(size=gt.shape)).astype(np.float32) * 3  # not unit length
    kind = make("normals")
    kind.fit(pd.DataFrame())
    scores = kind.metrics(kind.predict(torch.from_numpy(pred)), torch.from_numpy(gt))
    expected = reference_normals(pred, gt)
    names = ["mean_angle", "median_angle", "within_11_25", "within_22_5", "within_30"]
    for name, value in zip(names, expected, strict=True):
        assert scores[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_normal_loss_is_one_minus_mean_cosine_of_valid_pixels() -> None:
    kind = make("normals")
    kind.fit(pd.DataFrame())
    gt = torch.zeros(1, 3, 1, 2)
    gt[0, 2, 0, 0] = 1.0  # one valid pixel facing the camera; the other has no normal
    outputs = torch.zeros(1, 3, 1, 2)
    outputs[0, :, 0, 0] = torch.tensor([0.0, 2.0, 2.0])  # 45 degrees off, not unit length
    outputs[0, :, 0, 1] = torch.tensor([5.0, 0.0, 0.0])
    assert float(kind.loss(outputs, gt)) == pytest.approx(1 - np.cos(np.pi / 4))
    assert kind.metrics(kind.predict(outputs), gt)["mean_angle"] == pytest.approx(45.0)


def test_dense_metric_directions_are_registered() -> None:
    assert higher_is_better("miou") and higher_is_better("within_30")
    assert not higher_is_better("abs_err") and not higher_is_better("median_angle")
    assert make("normals").flip_negate_channel == 0
    assert make("segmentation", num_classes=2).augment_fill == IGNORE
