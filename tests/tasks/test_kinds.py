"""Task kinds: label fitting and encoding, masked losses and metrics, decoding."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from polytask.errors import DataError
from polytask.tasks.kinds import IGNORE, TASK_KINDS, TaskKind
from polytask.tasks.spec import Task


def make(kind: str, label: str | list[str] = "y", **options: Any) -> TaskKind:
    task = Task(name="t", kind=kind, input="x", label=label, **options)
    return TASK_KINDS.get(kind)(task)


def assert_zero_loss_that_backprops(kind: TaskKind, outputs: torch.Tensor,
                                    labels: torch.Tensor) -> None:
    outputs = outputs.clone().requires_grad_(True)
    loss = kind.loss(outputs, labels)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert outputs.grad is not None and torch.equal(outputs.grad, torch.zeros_like(outputs))


def test_the_core_kinds_are_registered() -> None:
    assert {"classification", "multilabel", "regression", "token_classification"} <= set(
        TASK_KINDS.names())


@pytest.mark.parametrize(
    ("kind", "label"),
    [("classification", "y"), ("multilabel", "y"), ("regression", "y"),
     ("token_classification", "y")],
)
def test_bad_metric_lists_valid_metrics(kind: str, label: str) -> None:
    valid = TASK_KINDS.get(kind).metric_names
    with pytest.raises(DataError) as info:
        make(kind, label, metric="bleu")
    message = str(info.value)
    assert "tasks.t.metric" in message and "'bleu'" in message and repr(kind) in message
    assert ", ".join(valid) in message


def test_default_and_chosen_metric() -> None:
    assert make("classification").metric == "accuracy"
    assert make("regression").metric == "mae" and not make("regression").higher_is_better
    assert make("classification", metric="mcc").metric == "mcc"


# ---------------------------------------------------------------- classification


def test_classification_fit_infers_sorted_names() -> None:
    kind = make("classification")
    kind.fit(pd.DataFrame({"y": ["pos", "neg", "neutral", "neg", None]}))
    assert kind.label_names == ["neg", "neutral", "pos"] and kind.num_outputs == 3
    assert kind.build_head(4).out_features == 3


def test_classification_explicit_labels_keep_their_order() -> None:
    kind = make("classification", labels=["pos", "neg"])
    kind.fit(pd.DataFrame({"y": ["neg", "neg"]}))
    assert kind.label_names == ["pos", "neg"]
    assert kind.encode(pd.DataFrame({"y": ["neg", "pos"]}), "train").tolist() == [1, 0]


def test_classification_label_map_applies() -> None:
    kind = make("classification", label_map={"0": "negative", "1": "positive"})
    frame = pd.DataFrame({"y": [1, 0, 1]})
    kind.fit(frame)
    assert kind.label_names == ["negative", "positive"]
    assert kind.encode(frame, "train").tolist() == [1, 0, 1]
    # a float column (ints with NaN) still maps 1.0 -> "1" -> "positive"
    floats = pd.DataFrame({"y": [1.0, np.nan, 0.0]})
    assert kind.encode(floats, "validation").tolist() == [1, IGNORE, 0]


def test_classification_unknown_label_names_label_split_and_fix() -> None:
    kind = make("classification")
    kind.fit(pd.DataFrame({"y": ["a", "b"]}))
    with pytest.raises(DataError) as info:
        kind.encode(pd.DataFrame({"y": ["a", "zebra"]}), "validation")
    message = str(info.value)
    assert "'zebra'" in message and "validation split" in message
    assert "`labels`" in message and "`label_map`" in message and "tasks.t" in message


def test_classification_needs_two_labels() -> None:
    kind = make("classification")
    with pytest.raises(DataError, match="at least 2 labels"):
        kind.fit(pd.DataFrame({"y": ["only", "only"]}))
    with pytest.raises(DataError, match="no labelled row"):
        make("classification").fit(pd.DataFrame({"y": [None, None]}))


def test_classification_missing_labels_are_masked_from_loss_and_metrics() -> None:
    kind = make("classification")
    frame = pd.DataFrame({"y": ["a", None, "b", float("nan"), "c"]})
    kind.fit(frame)
    labels = kind.encode(frame, "train")
    assert labels.tolist() == [0, IGNORE, 1, IGNORE, 2]
    torch.manual_seed(0)
    outputs = torch.randn(5, 3)
    keep = torch.tensor([0, 2, 4])
    expected = F.cross_entropy(outputs[keep], labels[keep])
    assert kind.loss(outputs, labels).item() == pytest.approx(expected.item())
    # the masked rows are predicted "wrong" but must not count
    predictions = torch.tensor([0, 2, 1, 0, 2])
    metrics = kind.metrics(predictions, labels)
    assert metrics["accuracy"] == pytest.approx(1.0)
    assert set(metrics) == {"accuracy", "macro_f1", "mcc", "f1", "f1_accuracy"}


def test_classification_all_missing_gives_zero_loss_with_graph() -> None:
    kind = make("classification")
    kind.fit(pd.DataFrame({"y": ["a", "b"]}))
    labels = torch.full((4,), IGNORE)
    assert_zero_loss_that_backprops(kind, torch.randn(4, 2), labels)


def test_classification_predict_and_decode() -> None:
    kind = make("classification")
    kind.fit(pd.DataFrame({"y": ["cat", "dog"]}))
    predictions = kind.predict(torch.tensor([[0.1, 2.0], [3.0, -1.0]]))
    assert predictions.tolist() == [1, 0]
    assert kind.decode(predictions) == ["dog", "cat"]
    restored = make("classification")
    restored.load_state(kind.state())
    assert restored.decode(predictions) == ["dog", "cat"]


# ------------------------------------------------------------------------ multilabel


def test_multilabel_list_column() -> None:
    # an empty cell (None) is "no labels"; only the missing_label marker is unlabelled
    kind = make("multilabel", missing_label="?")
    frame = pd.DataFrame({"y": [["sport", "news"], [], "art|news", None, "?"]})
    kind.fit(frame)
    assert kind.label_names == ["art", "news", "sport"]
    labels = kind.encode(frame, "train")
    assert labels[:4].tolist() == [[0, 1, 1], [0, 0, 0], [1, 1, 0], [0, 0, 0]]
    assert labels[4].isnan().all()


def test_multilabel_zero_one_columns() -> None:
    kind = make("multilabel", label=["smiling", "glasses"])
    frame = pd.DataFrame({"smiling": [1, 0, np.nan], "glasses": [1, 1, 0]})
    kind.fit(frame)
    assert kind.label_names == ["smiling", "glasses"]
    labels = kind.encode(frame, "train")
    assert labels[:2].tolist() == [[1, 1], [0, 1]] and labels[2].isnan().all()


def test_multilabel_explicit_labels_and_label_map() -> None:
    kind = make("multilabel", labels=["z", "a"], label_map={"A": "a"})
    kind.fit(pd.DataFrame({"y": [["a"]]}))
    assert kind.label_names == ["z", "a"]
    assert kind.encode(pd.DataFrame({"y": [["A", "z"], ["A"]]}), "test").tolist() == [
        [1, 1], [0, 1]]


def test_multilabel_unknown_label() -> None:
    kind = make("multilabel")
    kind.fit(pd.DataFrame({"y": [["a"], ["b"]]}))
    with pytest.raises(DataError) as info:
        kind.encode(pd.DataFrame({"y": [["a", "c"]]}), "test")
    message = str(info.value)
    assert "'c'" in message and "test split" in message and "`label_map`" in message


def test_multilabel_missing_rows_masked_from_loss_and_metrics() -> None:
    kind = make("multilabel", missing_label="?")
    frame = pd.DataFrame({"y": [["a"], "?", ["b"], ["a", "b"]]})
    kind.fit(frame)
    labels = kind.encode(frame, "train")
    torch.manual_seed(1)
    outputs = torch.randn(4, 2)
    keep = torch.tensor([0, 2, 3])
    expected = F.binary_cross_entropy_with_logits(outputs[keep], labels[keep])
    assert kind.loss(outputs, labels).item() == pytest.approx(expected.item())
    predictions = torch.tensor([[1, 0], [1, 1], [0, 1], [1, 1]])
    metrics = kind.metrics(predictions, labels)
    assert metrics["subset_accuracy"] == pytest.approx(1.0)
    assert metrics["micro_f1"] == pytest.approx(1.0)


def test_multilabel_all_missing_zero_loss() -> None:
    kind = make("multilabel", label=["p", "q"])
    kind.fit(pd.DataFrame({"p": [1], "q": [0]}))
    assert_zero_loss_that_backprops(kind, torch.randn(3, 2), torch.full((3, 2), float("nan")))


def test_multilabel_predict_and_decode() -> None:
    kind = make("multilabel")
    kind.fit(pd.DataFrame({"y": [["a", "b", "c"]]}))
    predictions = kind.predict(torch.tensor([[1.0, -1.0, 0.5], [-2.0, -1.0, -0.1]]))
    assert predictions.tolist() == [[1, 0, 1], [0, 0, 0]]
    assert kind.decode(predictions) == [["a", "c"], []]


# ------------------------------------------------------------------------ regression


def test_regression_fit_and_standardised_loss() -> None:
    kind = make("regression")
    frame = pd.DataFrame({"y": [1.0, 3.0, None, 5.0]})
    kind.fit(frame)
    mean, std = 3.0, float(np.std([1.0, 3.0, 5.0]))
    assert kind.mean == pytest.approx([mean]) and kind.std == pytest.approx([std])
    assert kind.label_names == ["y"] and kind.num_outputs == 1
    labels = kind.encode(frame, "train")
    assert labels.shape == (4, 1) and labels[2].isnan().all()
    outputs = torch.tensor([[0.5], [100.0], [0.0], [-0.5]])
    keep = torch.tensor([0, 1, 3])
    target = (labels[keep] - mean) / std
    expected = F.mse_loss(outputs[keep], target)
    assert kind.loss(outputs, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_regression_predictions_in_original_units() -> None:
    kind = make("regression", label=["price", "rooms"])
    frame = pd.DataFrame({"price": [100.0, 200.0, 300.0], "rooms": [1.0, 2.0, 6.0]})
    kind.fit(frame)
    labels = kind.encode(frame, "train")
    standardised = (labels - torch.tensor(kind.mean)) / torch.tensor(kind.std)
    # perfect standardised outputs: zero loss, predictions equal the raw targets
    assert kind.loss(standardised, labels).item() == pytest.approx(0.0, abs=1e-10)
    predictions = kind.predict(standardised)
    assert torch.allclose(predictions, labels, atol=1e-4)
    metrics = kind.metrics(predictions, labels)
    assert metrics["mae"] == pytest.approx(0.0, abs=1e-4)
    assert set(metrics) == {"mae", "mse", "pearson", "spearman", "pearson_spearman"}
    assert kind.decode(predictions)[0] == pytest.approx([100.0, 1.0], abs=1e-4)
    restored = make("regression", label=["price", "rooms"])
    restored.load_state(kind.state())
    assert torch.equal(restored.predict(standardised), predictions)


def test_regression_missing_targets_masked_from_metrics() -> None:
    kind = make("regression")
    kind.fit(pd.DataFrame({"y": [0.0, 2.0]}))
    labels = kind.encode(pd.DataFrame({"y": [1.0, None, 2.0]}), "test")
    predictions = torch.tensor([[1.0], [1000.0], [2.0]])
    assert kind.metrics(predictions, labels)["mae"] == pytest.approx(0.0)
    assert kind.decode(predictions) == [1.0, 1000.0, 2.0]


def test_regression_constant_target_has_unit_std() -> None:
    kind = make("regression")
    kind.fit(pd.DataFrame({"y": [4.0, 4.0]}))
    assert kind.std == [1.0] and kind.mean == [4.0]


def test_regression_all_missing_zero_loss() -> None:
    kind = make("regression")
    kind.fit(pd.DataFrame({"y": [1.0, 2.0]}))
    assert_zero_loss_that_backprops(kind, torch.randn(2, 1), torch.full((2, 1), float("nan")))


def test_regression_non_numeric_labels() -> None:
    kind = make("regression")
    with pytest.raises(DataError) as info:
        kind.fit(pd.DataFrame({"y": ["1.5", "high"]}))
    message = str(info.value)
    assert "['y']" in message and "train split" in message and "non-numeric" in message


# -------------------------------------------------------------- token classification


def test_token_fit_infers_sorted_tags_and_pads() -> None:
    kind = make("token_classification")
    frame = pd.DataFrame({"y": [["B-PER", "I-PER", "O"], ["O"]]})
    kind.fit(frame)
    assert kind.label_names == ["B-PER", "I-PER", "O"] and kind.level == "token"
    assert kind.encode(frame, "train").tolist() == [[0, 1, 2], [2, IGNORE, IGNORE]]


def test_token_explicit_labels_and_label_map() -> None:
    kind = make("token_classification", labels=["O", "B-LOC"], label_map={"LOC": "B-LOC"})
    kind.fit(pd.DataFrame({"y": [["O"]]}))
    assert kind.encode(pd.DataFrame({"y": [["LOC", "O"]]}), "train").tolist() == [[1, 0]]


def test_token_unknown_tag() -> None:
    kind = make("token_classification")
    kind.fit(pd.DataFrame({"y": [["O", "B-PER"]]}))
    with pytest.raises(DataError) as info:
        kind.encode(pd.DataFrame({"y": [["O", "B-ORG"]]}), "validation")
    message = str(info.value)
    assert "'B-ORG'" in message and "validation split" in message and "`labels`" in message


def test_token_missing_rows_none_or_nan_are_masked() -> None:
    # a concat of labelled and unlabelled frames stores the missing tag lists as NaN
    frame = pd.concat([pd.DataFrame({"x": [["a", "b"]], "y": [["B-PER", "O"]]}),
                       pd.DataFrame({"x": [["c"], ["d"]], "y": [None, None]})],
                      ignore_index=True)
    frame.loc[2, "y"] = float("nan")
    kind = make("token_classification")
    kind.fit(frame)
    assert kind.label_names == ["B-PER", "O"]
    labels = kind.encode(frame, "train")
    assert labels.tolist() == [[0, 1], [IGNORE, IGNORE], [IGNORE, IGNORE]]


def test_token_loss_over_labelled_positions_only() -> None:
    kind = make("token_classification")
    frame = pd.DataFrame({"y": [["B-PER", "I-PER", "O"], ["O"], None]})
    kind.fit(frame)
    labels = kind.encode(frame, "train")
    torch.manual_seed(2)
    outputs = torch.randn(3, 3, 3)
    keep = labels != IGNORE
    expected = F.cross_entropy(outputs[keep], labels[keep])
    assert kind.loss(outputs, labels).item() == pytest.approx(expected.item())
    assert_zero_loss_that_backprops(kind, outputs, torch.full((3, 3), IGNORE))


def test_token_metrics_entity_level_and_masked() -> None:
    kind = make("token_classification")
    kind.fit(pd.DataFrame({"y": [["B-PER", "I-PER", "O"]]}))
    labels = torch.tensor([[0, 1, 2], [2, IGNORE, IGNORE]])
    # padding positions predict B-PER, which would add false entities if not masked
    predictions = torch.tensor([[0, 1, 2], [2, 0, 0]])
    metrics = kind.metrics(predictions, labels)
    assert metrics["entity_f1"] == pytest.approx(1.0)
    assert metrics["token_accuracy"] == pytest.approx(1.0)
    wrong = torch.tensor([[0, 2, 2], [2, 0, 0]])  # entity cut short: no exact match
    assert kind.metrics(wrong, labels)["entity_f1"] == pytest.approx(0.0)


def test_token_predict_and_decode() -> None:
    kind = make("token_classification")
    kind.fit(pd.DataFrame({"y": [["B-X", "O"]]}))
    outputs = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
    assert kind.decode(kind.predict(outputs)) == [["B-X", "O"]]
