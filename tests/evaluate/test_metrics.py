"""Metrics against hand-worked examples (and scikit-learn where it computes the same thing)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import f1_score

from polytask.tasks.kinds import TASK_KINDS
from polytask.tasks.metrics import (
    HIGHER_IS_BETTER,
    classification_metrics,
    extract_entities,
    generation_metrics,
    higher_is_better,
    multilabel_metrics,
    regression_metrics,
    token_classification_metrics,
)

# ----------------------------------------------------------------- classification


def test_classification_hand_worked() -> None:
    # class 0: F1 1; class 1: P 1/2 R 1 -> 2/3; class 2: P 1 R 1/2 -> 2/3; class 3 absent.
    # MCC = (c*s - sum p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2)) = (12-5)/10.
    out = classification_metrics(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), num_labels=4)
    assert out == pytest.approx({"accuracy": 0.75, "macro_f1": 7 / 9, "mcc": 0.7, "f1": 7 / 9,
                                 "f1_accuracy": (0.75 + 7 / 9) / 2})


def test_classification_macro_f1_counts_predicted_only_classes() -> None:
    # class 2 appears only in predictions: it is averaged in with F1 0.
    out = classification_metrics(np.array([0, 2]), np.array([0, 1]), num_labels=3)
    assert out["macro_f1"] == pytest.approx((1 + 0 + 0) / 3)


def test_classification_constant_prediction_is_quiet_and_finite() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = classification_metrics(np.zeros(5, int), np.array([0, 0, 1, 1, 0]), num_labels=2)
    assert out["mcc"] == 0.0
    assert out["accuracy"] == pytest.approx(0.6)
    assert out["macro_f1"] == pytest.approx((0.75 + 0.0) / 2)


@pytest.mark.parametrize(
    ("predictions", "labels", "message"),
    [
        ([], [], "no examples"),
        ([0, 1], [0], "shape"),
        ([0, 5], [0, 1], "outside"),
        ([0, -1], [0, 1], "outside"),
        ([0.5, 1.0], [0, 1], "integer"),
        ([[0, 1]], [[0, 1]], "1-D"),
    ],
)
def test_classification_rejects_bad_input(predictions: list, labels: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        classification_metrics(np.array(predictions), np.array(labels), num_labels=3)


# ----------------------------------------------------------------- multilabel


def test_multilabel_hand_worked() -> None:
    preds = np.array([[1, 0, 1, 0], [0, 1, 0, 0]])
    labels = np.array([[1, 0, 0, 0], [0, 1, 0, 0]])
    out = multilabel_metrics(preds, labels)
    # columns: F1 1, 1, 0; the last column has no positive anywhere and is left out.
    # micro: tp 2, fp 1, fn 0 -> 4 / 5.
    assert out == pytest.approx({"micro_f1": 0.8, "macro_f1": 2 / 3, "subset_accuracy": 0.5})
    assert out["micro_f1"] == pytest.approx(f1_score(labels, preds, average="micro"))


def test_multilabel_accepts_bool_and_rejects_non_binary() -> None:
    labels = np.array([[True, False], [False, True]])
    assert multilabel_metrics(labels, labels)["subset_accuracy"] == 1.0
    with pytest.raises(ValueError, match="only 0 and 1"):
        multilabel_metrics(np.array([[2, 0]]), np.array([[1, 0]]))
    with pytest.raises(ValueError, match="no examples"):
        multilabel_metrics(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        multilabel_metrics(np.zeros(3), np.zeros(3))


def test_multilabel_no_positives_anywhere_is_zero_not_nan() -> None:
    out = multilabel_metrics(np.zeros((2, 3), int), np.zeros((2, 3), int))
    assert out == {"micro_f1": 0.0, "macro_f1": 0.0, "subset_accuracy": 1.0}


# ----------------------------------------------------------------- regression


def test_regression_hand_worked() -> None:
    labels = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    preds = np.array([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]])
    out = regression_metrics(preds, labels)
    # column 0 exact; column 1 errors 1, 2, 3 -> mse 14/3, mae 2; both columns correlate 1.
    assert out == pytest.approx({"pearson": 1.0, "spearman": 1.0, "pearson_spearman": 1.0,
                                 "mse": 7 / 3, "mae": 1.0})


def test_regression_spearman_and_pearson_differ() -> None:
    # ranks identical -> spearman 1; pearson < 1 because of the outlier.
    out = regression_metrics(np.array([1.0, 2.0, 3.0, 10.0]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert out["spearman"] == pytest.approx(1.0)
    assert 0.8 < out["pearson"] < 0.95
    # one swapped pair: 1 - 6 * 2 / (4 * 15) = 0.8
    swapped = regression_metrics(np.array([1.0, 3.0, 2.0, 4.0]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert swapped["spearman"] == pytest.approx(0.8)
    assert regression_metrics(-np.arange(4.0), np.arange(4.0))["pearson"] == pytest.approx(-1.0)


def test_regression_constant_prediction_scores_zero_correlation() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = regression_metrics(np.full((4, 2), 2.0), np.arange(8.0).reshape(4, 2))
    assert out["pearson"] == 0.0 and out["spearman"] == 0.0
    assert np.isfinite(out["mse"])


def test_regression_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no examples"):
        regression_metrics(np.zeros((0, 2)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match="shape"):
        regression_metrics(np.zeros((3, 2)), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="NaN"):
        regression_metrics(np.array([1.0, np.nan]), np.array([1.0, 2.0]))


# ----------------------------------------------------------------- token classification


@pytest.mark.parametrize(
    ("tags", "entities"),
    [
        # IOB2
        (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
        # IOB1: I- opens an entity after O; B- only separates same-type neighbours
        (["I-PER", "I-PER", "O", "I-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
        (["I-PER", "B-PER"], [("PER", 0, 0), ("PER", 1, 1)]),
        # I- of another type starts a new entity
        (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 0), ("LOC", 1, 2)]),
        # BIOES
        (["S-PER", "B-LOC", "I-LOC", "E-LOC", "O"], [("PER", 0, 0), ("LOC", 1, 3)]),
        (["B-LOC", "E-LOC", "E-LOC"], [("LOC", 0, 1), ("LOC", 2, 2)]),
        # untyped tags and an entity running to the end
        (["O", "B", "I"], [("_", 1, 2)]),
        (["O", "O"], []),
        ([], []),
    ],
)
def test_extract_entities(tags: list[str], entities: list[tuple[str, int, int]]) -> None:
    assert extract_entities(tags) == entities


def test_token_metrics_seqeval_readme_example() -> None:
    # seqeval's README example: f1 0.50, accuracy 0.80.
    labels = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    preds = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    out = token_classification_metrics(preds, labels)
    assert out == pytest.approx(
        {"entity_f1": 0.5, "entity_precision": 0.5, "entity_recall": 0.5, "token_accuracy": 0.8}
    )


def test_token_metrics_hand_worked() -> None:
    labels = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG"]]
    preds = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O"]]
    # true: PER(0-1), LOC(3), ORG(0-1); predicted: PER(0-1), ORG(3), ORG(0): 1 correct.
    out = token_classification_metrics(preds, labels)
    assert out["entity_precision"] == pytest.approx(1 / 3)
    assert out["entity_recall"] == pytest.approx(1 / 3)
    assert out["entity_f1"] == pytest.approx(1 / 3)
    assert out["token_accuracy"] == pytest.approx(4 / 6)


def test_token_metrics_entities_do_not_cross_sentences() -> None:
    labels = [["O", "I-PER"], ["I-PER", "O"]]
    preds = [["O", "B-PER"], ["B-PER", "O"]]  # the same two entities, IOB2-tagged
    out = token_classification_metrics(preds, labels)
    assert out["entity_f1"] == 1.0
    assert out["token_accuracy"] == 0.5


def test_token_metrics_no_entities_and_bad_input() -> None:
    out = token_classification_metrics([["O", "O"]], [["O", "O"]])
    assert out == {"entity_f1": 0.0, "entity_precision": 0.0, "entity_recall": 0.0,
                   "token_accuracy": 1.0}
    with pytest.raises(ValueError, match="no tokens"):
        token_classification_metrics([], [])
    with pytest.raises(ValueError, match="no tokens"):
        token_classification_metrics([[]], [[]])
    with pytest.raises(ValueError, match="sentence 0 has 1 predicted tags but 2"):
        token_classification_metrics([["O"]], [["O", "O"]])
    with pytest.raises(ValueError, match="2 predicted sentences but 1"):
        token_classification_metrics([["O"], ["O"]], [["O"]])
    with pytest.raises(ValueError, match="X-PER"):
        token_classification_metrics([["X-PER"]], [["O"]])


# ----------------------------------------------------------------- directions


def test_every_returned_metric_has_a_direction() -> None:
    names: set[str] = set()
    names |= set(classification_metrics(np.array([0, 1]), np.array([0, 1]), 2))
    names |= set(multilabel_metrics(np.eye(2, dtype=int), np.eye(2, dtype=int)))
    names |= set(regression_metrics(np.arange(3.0), np.arange(3.0)))
    names |= set(token_classification_metrics([["B-X"]], [["B-X"]]))
    names |= set(generation_metrics(["a"], ["a"]))
    for kind in TASK_KINDS.names():  # every kind's metrics, the dense ones included
        names |= set(TASK_KINDS.get(kind).metric_names)
    assert names == set(HIGHER_IS_BETTER)
    assert {n for n, hib in HIGHER_IS_BETTER.items() if not hib} == {
        "mse", "mae", "abs_err", "rel_err", "mean_angle", "median_angle"}
    assert all(higher_is_better(name) == HIGHER_IS_BETTER[name] for name in names)


def test_higher_is_better_unknown_metric_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown metric 'f2'.*accuracy.*mae"):
        higher_is_better("f2")
