"""Per-task label options: whitespace stripping, the missing-label marker, empty multilabel
cells, finite regression labels, the regression loss and class weights."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from polytask.errors import DataError
from polytask.tasks.data import read_spec
from polytask.tasks.kinds import IGNORE, TASK_KINDS, Classification, Regression, TaskKind
from polytask.tasks.spec import DataSpec, Task


def make(kind: str, label: str | list[str] = "y", **options: Any) -> TaskKind:
    task = Task(name="t", kind=kind, input="x", label=label, **options)
    return TASK_KINDS.get(kind)(task)


def read_csv_train(path: Path) -> pd.DataFrame:
    """The rows of a CSV file as the data layer reads them (the path users take)."""
    return read_spec(DataSpec(path=str(path)), "data")["train"]


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep any Arrow cache of the file loaders out of the home folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


# ------------------------------------------------------------------ whitespace in labels


def test_padded_class_names_are_one_class_and_reported() -> None:
    kind = make("classification")
    frame = pd.DataFrame({"y": ["setosa", " setosa", "setosa ", "versicolor", "virginica ",
                                "virginica"]})
    kind.fit(frame)
    assert kind.label_names == ["setosa", "versicolor", "virginica"]
    with pytest.warns(UserWarning, match=r"tasks\.t: stripped whitespace from 3 label value\(s\) "
                                         r"in the train split.*strip_labels: false"):
        ids = kind.encode(frame, "train")
    assert ids.tolist() == [0, 0, 0, 1, 2, 2]


def test_strip_labels_false_keeps_labels_as_written() -> None:
    kind = make("classification", strip_labels=False)
    kind.fit(pd.DataFrame({"y": ["a", " a", "b"]}))
    assert kind.label_names == [" a", "a", "b"]


def test_multilabel_names_are_stripped() -> None:
    kind = make("multilabel")
    frame = pd.DataFrame({"y": ["sport | news", ["news "], "art|"]})
    kind.fit(frame)
    assert kind.label_names == ["art", "news", "sport"]
    with pytest.warns(UserWarning, match="stripped whitespace from 3 label value"):
        labels = kind.encode(frame, "validation")
    assert labels.tolist() == [[0, 1, 1], [0, 1, 0], [1, 0, 0]]


# ------------------------------------------------------------------ missing vs no labels


def test_multilabel_empty_csv_cell_is_no_labels_and_marker_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("x,y\n1,sport|news\n2,\n3,?\n4,news\n")
    frame = read_csv_train(path)
    kind = make("multilabel", missing_label="?")
    kind.fit(frame)
    assert kind.label_names == ["news", "sport"]
    labels = kind.encode(frame, "train")
    assert labels[[0, 1, 3]].tolist() == [[1, 1], [0, 0], [1, 0]]  # row 1: the empty set
    assert labels[2].isnan().all()  # row 2: '?' marks a missing label
    outputs = torch.zeros(4, 2, requires_grad=True)
    assert kind.loss(outputs, labels).item() == pytest.approx(math.log(2))  # 3 rows counted


def test_multilabel_empty_cells_are_no_labels_but_a_train_split_without_any_label_fails() -> None:
    kind = make("multilabel", labels=["p", "q"])
    kind.fit(pd.DataFrame({"y": ["p", None]}))
    labels = kind.encode(pd.DataFrame({"y": [None, float("nan"), ""]}), "test")
    assert labels.tolist() == [[0, 0], [0, 0], [0, 0]]
    with pytest.raises(DataError, match=r"no row of column\(s\) \['y'\] holds a label"):
        kind.fit(pd.DataFrame({"y": [None, float("nan"), ""]}))


def test_missing_label_marker_in_single_label_kinds(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("x,kind,size\n1,cat,1.5\n2,?,?\n3,dog,2.5\n4, ? ,\n")
    frame = read_csv_train(path)
    classes = make("classification", label="kind", missing_label="?")
    classes.fit(frame)
    assert classes.label_names == ["cat", "dog"]
    assert classes.encode(frame, "train").tolist() == [0, IGNORE, 1, IGNORE]
    sizes = make("regression", label="size", missing_label="?")
    sizes.fit(frame)
    values = sizes.encode(frame, "train")[:, 0]
    assert values[[0, 2]].tolist() == [1.5, 2.5] and values[[1, 3]].isnan().all()


def test_missing_label_marker_is_validated() -> None:
    with pytest.raises(ValidationError, match=r"missing_label: '\?' is also in `labels`"):
        Task(name="t", kind="classification", input="x", label="y", labels=["?", "a"],
             missing_label="?")
    with pytest.raises(ValidationError, match="give a visible marker"):
        Task(name="t", kind="classification", input="x", label="y", missing_label=" ")


# ------------------------------------------------------------------ infinite regression labels


@pytest.mark.parametrize("bad", ["inf", "-inf", "1e39"])
def test_non_finite_regression_label_is_a_data_error_with_row(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "rows.csv"
    path.write_text(f"x,y\n1,2.0\n2,3.0\n3,{bad}\n")
    frame = read_csv_train(path)
    kind = make("regression")
    with pytest.raises(DataError) as info:
        kind.fit(frame)
    message = str(info.value)
    assert "tasks.t" in message and "'y'" in message and "row 2 of the train split" in message
    assert "leave their labels empty" in message
    kind.fit(frame.iloc[:2])
    with pytest.raises(DataError, match=r"row 2 of the test split"):
        kind.encode(frame, "test")


# ------------------------------------------------------------------ regression loss


def _regression(loss: str | None, **options: Any) -> Regression:
    kind = make("regression", loss=loss, **options)
    assert isinstance(kind, Regression)
    kind.fit(pd.DataFrame({"y": [10.0, 20.0, 30.0, 40.0]}))
    return kind


def test_regression_losses_on_standardised_targets() -> None:
    labels = torch.tensor([[10.0], [25.0], [float("nan")], [70.0]])
    outputs = torch.tensor([[0.5], [-2.0], [9.0], [0.0]])
    mean, std = 25.0, float(np.std([10.0, 20.0, 30.0, 40.0]))
    keep = [0, 1, 3]
    targets = (labels[keep] - mean) / std
    expected = {
        None: F.mse_loss(outputs[keep], targets),
        "mse": F.mse_loss(outputs[keep], targets),
        "l1": F.l1_loss(outputs[keep], targets),
        "huber": F.huber_loss(outputs[keep], targets, delta=1.0),
    }
    for loss, value in expected.items():
        assert _regression(loss).loss(outputs, labels).item() == pytest.approx(value.item())
    half = _regression("huber", huber_delta=0.5).loss(outputs, labels)
    assert half.item() == pytest.approx(F.huber_loss(outputs[keep], targets, delta=0.5).item())


def test_regression_predictions_invert_the_standardisation() -> None:
    kind = _regression("l1")
    labels = torch.tensor([[10.0], [40.0]])
    outputs = kind._standardise(labels)
    assert kind.loss(outputs, labels).item() == pytest.approx(0.0)
    assert torch.allclose(kind.predict(outputs), labels)


def test_loss_options_are_validated() -> None:
    with pytest.raises(ValidationError, match="loss: 'l1' is a regression loss"):
        Task(name="t", kind="classification", input="x", label="y", loss="l1")
    with pytest.raises(ValidationError, match=r"huber_delta: 2\.0 only applies with `loss: huber`"):
        Task(name="t", kind="regression", input="x", label="y", loss="l1", huber_delta=2.0)
    with pytest.raises(ValidationError, match="loss"):
        Task(name="t", kind="regression", input="x", label="y", loss="hinge")


def test_census_hours_task_trains_with_the_loss_of_its_metric() -> None:
    from polytask.suites import load_suite

    task = load_suite("census", train_size=50, eval_size=20).task("hours_per_week")
    assert task.metric == "mae" and task.loss == "l1"


# ------------------------------------------------------------------ class weights


def _classes(**options: Any) -> Classification:
    kind = make("classification", **options)
    assert isinstance(kind, Classification)
    kind.fit(pd.DataFrame({"y": ["a"] * 6 + ["b"] * 3 + ["c"] + [None]}))
    return kind


def test_balanced_weights_follow_scikit_learn() -> None:
    kind = _classes(class_weight="balanced")
    # n_samples / (n_classes * count): 10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1)
    assert kind.class_weights == pytest.approx([10 / 18, 10 / 9, 10 / 3])


def test_weighted_loss_equals_hand_computed_cross_entropy() -> None:
    kind = _classes(class_weight="balanced")
    torch.manual_seed(0)
    outputs = torch.randn(4, 3)
    labels = torch.tensor([0, 2, IGNORE, 1])
    weights = [10 / 18, 10 / 9, 10 / 3]
    log_p = outputs.log_softmax(dim=-1)
    by_hand = -(weights[0] * log_p[0, 0] + weights[2] * log_p[1, 2] + weights[1] * log_p[3, 1]) / 3
    assert kind.loss(outputs, labels).item() == pytest.approx(by_hand.item())
    unweighted = _classes().loss(outputs, labels)
    assert unweighted.item() == pytest.approx(F.cross_entropy(outputs, labels).item())


def test_explicit_weights_and_their_state() -> None:
    kind = _classes(class_weight={"c": 4.0})
    assert kind.class_weights == [1.0, 1.0, 4.0]
    restored = make("classification", class_weight={"c": 4.0})
    restored.load_state(kind.state())
    outputs, labels = torch.randn(3, 3), torch.tensor([0, 1, 2])
    assert torch.equal(restored.loss(outputs, labels), kind.loss(outputs, labels))


def test_class_weight_errors_name_the_fix() -> None:
    with pytest.raises(DataError, match=r"class_weight: label\(s\) \['z'\] are not in the label"):
        _classes(class_weight={"z": 2.0})
    kind = make("classification", labels=["a", "b", "c"], class_weight="balanced")
    with pytest.raises(DataError, match=r"\['c'\] never occur"):
        kind.fit(pd.DataFrame({"y": ["a", "b"]}))
    with pytest.raises(ValidationError, match="only classification tasks take class weights"):
        Task(name="t", kind="regression", input="x", label="y", class_weight="balanced")
    with pytest.raises(ValidationError, match="not positive finite numbers"):
        Task(name="t", kind="classification", input="x", label="y", class_weight={"a": 0})


def test_numeric_class_names_can_key_the_weights() -> None:
    task = Task.model_validate({"name": "t", "kind": "classification", "input": "x",
                                "label": "y", "class_weight": {0: 1.0, 1: 5.0}})
    kind = TASK_KINDS.get("classification")(task)
    kind.fit(pd.DataFrame({"y": [0, 1, 0, 0]}))
    assert kind.class_weights == [1.0, 5.0]
