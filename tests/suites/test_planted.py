"""The `planted` suite: deterministic tables, the promised structure, its recorded partition."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from polytask.errors import ConfigError
from polytask.suites import SUITES, load_suite
from polytask.suites.planted import BINARY_LABELS, planted_groups
from polytask.tasks.spec import SPLITS


def _agreement(frame: pd.DataFrame, a: str, b: str) -> float:
    return float((frame[a] == frame[b]).mean())


def test_registered_with_a_citation() -> None:
    assert "planted" in SUITES.names()
    assert SUITES.info()[SUITES.names().index("planted")].paper


def test_shapes_columns_and_balanced_labels() -> None:
    suite = load_suite("planted", tasks=6, groups=2, features=5, train_size=300, eval_size=50)
    assert suite.data is not None
    assert {split: len(frame) for split, frame in suite.data.items()} == {
        "train": 300, "validation": 50, "test": 50}
    assert set(suite.data) == set(SPLITS)
    assert suite.task_names == [f"task{i}" for i in range(6)]
    assert list(suite.data["train"].columns) == [f"x{j}" for j in range(5)] + suite.task_names
    for task in suite.tasks:
        assert task.kind == "classification" and task.labels == BINARY_LABELS
        assert task.input == [f"x{j}" for j in range(5)]
        column = pd.concat(suite.data.values())[task.name]
        assert set(column) == set(BINARY_LABELS)
        assert abs((column == "1").mean() - 0.5) < 0.01  # thresholded at the median
    assert suite.backbone.type == "mlp"


def test_true_groups_are_the_round_robin_partition() -> None:
    suite = load_suite("planted", tasks=7, groups=3, train_size=100, eval_size=20)
    assert suite.true_groups == [["task0", "task3", "task6"], ["task1", "task4"],
                                 ["task2", "task5"]]
    assert sorted(itertools.chain(*suite.true_groups)) == sorted(suite.task_names)
    assert planted_groups(4, 1) == [["task0", "task1", "task2", "task3"]]


def test_a_real_suite_knows_no_partition() -> None:
    assert load_suite("yeast").true_groups is None


def test_same_seed_same_table_other_seed_other_table() -> None:
    options = {"train_size": 200, "eval_size": 50}
    first = load_suite("planted", seed=3, **options)
    again = load_suite("planted", seed=3, **options)
    other = load_suite("planted", seed=4, **options)
    assert first.data is not None and again.data is not None and other.data is not None
    for split in SPLITS:
        pd.testing.assert_frame_equal(first.data[split], again.data[split])
    assert not np.allclose(first.data["train"]["x0"], other.data["train"]["x0"])


def test_tasks_agree_within_groups_and_not_across() -> None:
    """At the default noise a group's tasks agree on ~90% of rows, other groups' on ~50%."""
    suite = load_suite("planted", train_size=3000)
    assert suite.data is not None and suite.true_groups is not None
    train = suite.data["train"]
    group_of = {t: g for g, members in enumerate(suite.true_groups) for t in members}
    within, across = [], []
    for a, b in itertools.combinations(suite.task_names, 2):
        (within if group_of[a] == group_of[b] else across).append(_agreement(train, a, b))
    assert min(within) > 0.8
    assert max(across) < 0.7
    assert abs(np.mean(across) - 0.5) < 0.1


def test_zero_noise_makes_a_group_identical() -> None:
    suite = load_suite("planted", tasks=4, groups=2, noise=0.0, train_size=200, eval_size=20)
    assert suite.data is not None
    train = suite.data["train"]
    assert _agreement(train, "task0", "task2") == 1.0
    assert _agreement(train, "task0", "task1") < 0.9


@pytest.mark.parametrize(("options", "message"), [
    ({"groups": 4, "tasks": 3}, "groups <= tasks"),
    ({"groups": 0}, "groups <= tasks"),
    ({"noise": -0.1}, "suite.noise: must be >= 0"),
    ({"train_size": 0}, "suite.train_size: must be a positive"),
    ({"features": 0}, "suite.features: must be a positive"),
])
def test_bad_options_say_what_to_change(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_suite("planted", **options)


def test_an_option_a_suite_does_not_take_is_a_config_error_listing_its_options() -> None:
    from polytask.errors import ConfigError
    from polytask.suites import load_suite

    with pytest.raises(ConfigError, match=r"'planted' takes no option \['options'\].*'groups'"):
        load_suite("planted", options={"groups": 2})
