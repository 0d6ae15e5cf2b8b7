"""GLUE's official metrics against scikit-learn/scipy, and the GLUE average on hand values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from polytask.tasks import catalog
from polytask.tasks.metrics import classification_metrics, regression_metrics

RNG = np.random.default_rng(0)
GOLD = RNG.integers(0, 2, 60)
PRED = np.where(RNG.random(60) < 0.7, GOLD, 1 - GOLD)


def test_binary_f1_is_the_positive_class_and_f1_accuracy_their_mean() -> None:
    out = classification_metrics(PRED, GOLD, num_labels=2)
    assert out["mcc"] == pytest.approx(matthews_corrcoef(GOLD, PRED))
    assert out["f1"] == pytest.approx(f1_score(GOLD, PRED, pos_label=1))
    assert out["f1_accuracy"] == pytest.approx(
        (f1_score(GOLD, PRED) + accuracy_score(GOLD, PRED)) / 2)


def test_three_class_f1_is_the_macro_f1_as_superglue_cb() -> None:
    gold, pred = RNG.integers(0, 3, 40), RNG.integers(0, 3, 40)
    out = classification_metrics(pred, gold, num_labels=3)
    assert out["f1"] == pytest.approx(f1_score(gold, pred, average="macro"))
    assert out["f1_accuracy"] == pytest.approx(
        (f1_score(gold, pred, average="macro") + accuracy_score(gold, pred)) / 2)


def test_pearson_spearman_is_the_mean_of_both() -> None:
    gold = RNG.uniform(0, 5, 50)
    pred = gold + RNG.normal(0, 1, 50)
    expected = (stats.pearsonr(pred, gold).statistic + stats.spearmanr(pred, gold).statistic) / 2
    assert regression_metrics(pred, gold)["pearson_spearman"] == pytest.approx(expected)


def _tasks() -> list:
    return [catalog.catalog_task(n) for n in catalog.entries() if n.startswith("glue/")]


def test_the_glue_average_on_hand_values() -> None:
    test = {
        "cola": {"mcc": 0.5}, "sst2": {"accuracy": 0.9},
        "mrpc": {"f1": 0.8, "accuracy": 0.7}, "stsb": {"pearson": 0.6, "spearman": 0.8},
        "qqp": {"f1": 0.6, "accuracy": 0.8}, "mnli": {"accuracy": 0.8},
        "qnli": {"accuracy": 0.9}, "rte": {"accuracy": 0.6}, "wnli": {"accuracy": 0.5},
    }
    extra = {"mnli": {"test_mismatched": {"accuracy": 0.7}}}
    glue = catalog.benchmark_scores(_tasks(), test, extra)["glue"]
    # cola .5, sst2 .9, mrpc .75, stsb .7, qqp .7, mnli-m .8, mnli-mm .7, qnli .9, rte .6,
    # wnli .5: ten scores, MNLI matched and mismatched each counted once
    assert glue["score"] == pytest.approx(7.05 / 10)
    assert glue["complete"] and glue["missing"] == []
    assert glue["parts"]["glue/mrpc"] == pytest.approx(0.75)
    assert glue["parts"]["glue/mnli:test_mismatched"] == pytest.approx(0.7)


def test_a_partial_glue_run_averages_what_it_has_and_says_what_is_missing() -> None:
    tasks = [catalog.catalog_task("glue/rte"), catalog.catalog_task("squad")]
    found = catalog.benchmark_scores(tasks, {"rte": {"accuracy": 0.6}, "squad": {"f1": 1.0}},
                                     {})
    assert set(found) == {"glue"}
    assert found["glue"]["score"] == pytest.approx(0.6) and not found["glue"]["complete"]
    assert len(found["glue"]["missing"]) == 9
    assert catalog.benchmark_scores([catalog.catalog_task("squad")], {"squad": {}}, {}) == {}
