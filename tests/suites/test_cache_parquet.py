"""The suites' disk cache: Parquet files that round-trip dtypes; pickles are never read."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from polytask.files import cache_dir
from polytask.suites._base import (
    Splits,
    _cache_path,
    cached_tables,
    clear_memory_cache,
    source_fingerprint,
)

BUILDS: list[dict[str, object]] = []


def build(rows: int) -> dict[str, Splits]:
    """Tables with every kind of column a suite stores (module level: the cache keys on it)."""
    BUILDS.append({"rows": rows})
    frame = pd.DataFrame({
        "text": pd.Series([f"row {i}" for i in range(rows)], dtype=object),
        "label": [("yes", "no")[i % 2] for i in range(rows)],
        "colour": pd.Categorical([("red", "blue", None)[i % 3] for i in range(rows)]),
        "tags": [[("a", "b", "c")[j] for j in range(i % 3)] for i in range(rows)],
        "score": [float(i) if i % 4 else np.nan for i in range(rows)],
        "count": np.arange(rows, dtype="int64"),
        "flag": [bool(i % 2) for i in range(rows)],
    })
    frame.loc[1, "text"] = None
    return {"demo": {"train": frame, "validation": frame.iloc[:2].reset_index(drop=True),
                     "test": frame.iloc[2:].reset_index(drop=True)}}


class Trap:
    """Unpickling this creates `marker`: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@pytest.fixture
def source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path / "cache"))
    clear_memory_cache()
    BUILDS.clear()
    path = tmp_path / "source.txt"
    path.write_text("source data")
    yield path
    clear_memory_cache()


def load(source: Path, rows: int = 7) -> dict[str, Splits]:
    return cached_tables("demo", build, {"rows": rows}, [source])


def test_tables_round_trip_through_parquet_with_their_dtypes(source: Path) -> None:
    built = load(source)
    clear_memory_cache()  # the next load reads the disk cache
    read = load(source)
    assert len(BUILDS) == 1
    for split, frame in built["demo"].items():
        again = read["demo"][split]
        pd.testing.assert_frame_equal(again, frame)
        assert again["tags"].map(type).eq(list).all()  # label lists stay lists
        assert isinstance(again.index, pd.RangeIndex)
    suites = cache_dir("suites")
    files = sorted(p.relative_to(suites) for p in suites.rglob("*") if p.is_file())
    assert all(p.suffix == ".parquet" for p in files) and len(files) == 3


def test_pickle_files_in_the_cache_are_never_loaded(source: Path, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    key = {"options": {"rows": 7}, "sources": source_fingerprint(source)}
    target = _cache_path("demo", key)
    target.parent.mkdir(parents=True)
    booby_trap = pickle.dumps(build(7) | {"trap": Trap(marker)})
    target.write_bytes(booby_trap)  # a file where the cache folder goes
    target.with_name(target.name + ".pkl").write_bytes(booby_trap)  # an old-style cache file
    BUILDS.clear()
    tables = load(source)
    assert not marker.exists() and set(tables) == {"demo"} and len(BUILDS) == 1
    assert target.is_dir()  # the stray file was replaced by a Parquet cache
    clear_memory_cache()
    load(source)
    assert len(BUILDS) == 1 and not marker.exists()


def test_unreadable_parquet_file_is_rebuilt(source: Path) -> None:
    load(source)
    (train,) = cache_dir("suites").glob("demo-*/demo/train.parquet")
    train.write_bytes(b"not parquet")
    clear_memory_cache()
    with pytest.warns(UserWarning, match="ignoring unreadable suite cache"):
        tables = load(source)
    assert len(BUILDS) == 2 and len(tables["demo"]["train"]) == 7
    clear_memory_cache()
    load(source)  # rewritten: read back without a rebuild
    assert len(BUILDS) == 2
