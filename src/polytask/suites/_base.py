"""What every suite shares: the `Suite` record, the registry, data location, split carving and
the two-level cache (in process, then on disk)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from polytask.errors import DataError
from polytask.files import cache_dir
from polytask.models.spec import BackboneSpec
from polytask.registry import Registry
from polytask.tasks.spec import SPLITS, Task

#: Seed used to carve and subsample splits; fixed so every run sees the same rows.
SEED = 0

#: Bump when the loaders change what they return, so stale disk caches are ignored.
#: 3: a folder of Parquet files (2 and earlier were pickle files, never read now).
CACHE_VERSION = 3

#: Split name -> table.
Splits = dict[str, pd.DataFrame]


@dataclass
class Suite:
    """A ready-to-train set of tasks with their data, backbone and recommended settings.

    Attributes:
        name: registry name (``load_suite(name)``).
        description: one paragraph: where the data comes from and what the tasks are.
        tasks: the tasks; in a one-dataset-per-task suite each `Task.data` holds its own
            ``{"train", "validation", "test"} -> DataFrame`` dict.
        data: the shared ``{"train", "validation", "test"} -> DataFrame`` dict whose rows
            carry a label column per task, or None when every task has its own data.
        backbone: the backbone the suite is meant for.
        recommended: training settings that work on a laptop CPU (max_steps, batch_size, lr,
            ...); a starting point, not tuned results.
        true_groups: the tasks' known grouping (a partition of the task names), for a
            synthetic suite that plants one (`planted`); None for real data.
    """

    name: str
    description: str
    tasks: list[Task]
    data: Splits | None
    backbone: BackboneSpec
    recommended: dict[str, Any] = field(default_factory=dict)
    true_groups: list[list[str]] | None = None

    def task(self, name: str) -> Task:
        """The task called `name`."""
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(f"suite {self.name!r} has no task {name!r}; tasks: {self.task_names}")

    def task_data(self, name: str) -> Splits:
        """The split dict that feeds task `name`: its own data, or else the shared data."""
        own = self.task(name).data
        if isinstance(own, dict):
            return own
        if own is None and self.data is not None:
            return self.data
        raise DataError(f"suite {self.name!r}: task {name!r} has no in-memory split dict")

    @property
    def task_names(self) -> list[str]:
        """Task names in suite order."""
        return [task.name for task in self.tasks]


#: A suite loader takes keyword options and returns a `Suite`.
SuiteLoader = Callable[..., Suite]

#: Built-in suites; ``paper`` holds the dataset citation.
SUITES: Registry[SuiteLoader] = Registry("suite")


# --------------------------------------------------------------------------- locating data


def package_dir(package: str, pip_command: str) -> Path:
    """The folder of an installed package, found without importing it.

    Raises:
        DataError: naming `pip_command` if the package is not installed.
    """
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataError(
            f"this suite needs the data shipped in the {package!r} package, which is not "
            f"installed; install it with: {pip_command}"
        )
    return Path(locations[0])


def package_file(package: str, relative: str, pip_command: str) -> Path:
    """A data file inside an installed package; DataError naming `pip_command` if absent."""
    path = package_dir(package, pip_command) / relative
    if not path.exists():
        raise DataError(
            f"{path} is missing from the installed {package!r} package (wrong version?); "
            f"reinstall it with: {pip_command}"
        )
    return path


def source_fingerprint(*paths: Path) -> list[list[Any]]:
    """Name, size and mtime of source files: part of the disk-cache key."""
    out = []
    for path in paths:
        stat = path.stat()
        out.append([str(path), stat.st_size, stat.st_mtime_ns])
    return out


# --------------------------------------------------------------------------- carving splits


def _permuted(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    order = np.random.default_rng(seed).permutation(len(frame))
    return frame.iloc[order].reset_index(drop=True)


def _take(frame: pd.DataFrame, start: int, size: int | None) -> pd.DataFrame:
    stop = len(frame) if size is None else min(len(frame), start + size)
    return frame.iloc[start:stop].reset_index(drop=True)


def carve_splits(
    train: pd.DataFrame,
    test: pd.DataFrame | None = None,
    *,
    train_size: int | None,
    eval_size: int | None,
    default_eval_fraction: float = 0.1,
    seed: int = SEED,
) -> Splits:
    """Deterministic train/validation/test splits from one or two source tables.

    Rows are shuffled with a fixed seed. Evaluation rows are taken first (test, then
    validation) from the front of the shuffled order and training rows after them, so
    changing `train_size` never changes the evaluation sets.

    Args:
        train: the source training table (or the only table).
        test: the source test table, if the dataset ships one; otherwise the test split is
            carved from `train`.
        train_size: training rows to keep (None: all remaining).
        eval_size: rows in each of validation and test (None: `default_eval_fraction` of
            `train` for each carved split, and the whole shipped test table).
    """
    for name, value in (("train_size", train_size), ("eval_size", eval_size)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a positive number of rows or None, got {value}")
    shuffled = _permuted(train, seed)
    carved = round(default_eval_fraction * len(train)) if eval_size is None else eval_size
    start = 0
    if test is None:
        test_split = _take(shuffled, 0, carved)
        start = len(test_split)
    else:
        test_split = _take(_permuted(test, seed), 0, eval_size)
    validation = _take(shuffled, start, carved)
    start += len(validation)
    if start >= len(shuffled):
        raise ValueError(
            f"eval_size={eval_size} leaves no training rows out of {len(train)}; use a smaller one"
        )
    train_split = _take(shuffled, start, train_size)
    return {"train": train_split, "validation": validation, "test": test_split}


# --------------------------------------------------------------------------- caching


def _cache_path(suite: str, key: dict[str, Any]) -> Path:
    """The cache folder of one set of tables: ``<suite>-<digest>/<dataset>/<split>.parquet``."""
    stamp = {"key": key, "version": CACHE_VERSION, "pandas": pd.__version__}
    blob = json.dumps(stamp, sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return cache_dir("suites", f"{suite}-{digest}")


def _read_table(file: Path) -> pd.DataFrame:
    """One cached table with its dtypes as written: Parquet keeps numbers, booleans and
    categoricals; object columns (strings, label lists) are restored as Python objects, so
    lists come back as lists (not numpy arrays) and strings keep the object dtype."""
    table = pq.read_table(file)
    frame = table.to_pandas()
    for column in (table.schema.pandas_metadata or {}).get("columns", []):
        name = column.get("name")
        if column.get("numpy_type") == "object" and name in frame.columns:
            frame[name] = pd.Series(table.column(name).to_pylist(), index=frame.index,
                                    dtype=object)
    return frame


def _read_disk(path: Path) -> dict[str, Splits] | None:
    """The cached tables, or None when there are none (or they cannot be read: rebuild)."""
    if not path.is_dir():
        return None
    value: dict[str, Splits] = {}
    try:
        for file in sorted(path.glob("*/*.parquet")):
            value.setdefault(file.parent.name, {})[file.stem] = _read_table(file)
    except (OSError, pa.ArrowException) as error:  # a truncated or foreign file: rebuild it
        warnings.warn(f"ignoring unreadable suite cache {path}: {error}", stacklevel=3)
        return None
    return value or None


def _replace_folder(new: Path, path: Path) -> None:
    """Move the finished folder `new` to `path`, replacing a stale or unreadable cache."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
    try:
        os.replace(new, path)
    except OSError:
        if not path.is_dir():
            raise
        shutil.rmtree(new, ignore_errors=True)  # another process has just written it


def _write_disk(path: Path, value: dict[str, Splits]) -> None:
    """Write one Parquet file per table into a temp folder, then rename it into place, so a
    reader never sees half a cache; a read-only cache folder only costs a warning."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name, suffix=".tmp"))
        try:
            for dataset, splits in value.items():
                (tmp / dataset).mkdir()
                for split, frame in splits.items():
                    frame.to_parquet(tmp / dataset / f"{split}.parquet")
            _replace_folder(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except (OSError, ValueError, TypeError, pa.ArrowException) as error:  # e.g. mixed types
        warnings.warn(f"could not write suite cache {path}: {error}", stacklevel=3)


@lru_cache(maxsize=16)
def _cached(
    suite: str, build: Callable[..., dict[str, Splits]], key_json: str
) -> dict[str, Splits]:
    key = json.loads(key_json)
    path = _cache_path(suite, key)
    value = _read_disk(path)
    if value is None:
        value = build(**key["options"])
        _write_disk(path, value)
    return value


def cached_tables(
    suite: str,
    build: Callable[..., dict[str, Splits]],
    options: dict[str, Any],
    sources: list[Path],
) -> dict[str, Splits]:
    """Tables of a suite, cached in process (lru_cache) and on disk (Parquet).

    Args:
        suite: suite name (disk cache file prefix).
        build: a module-level function ``build(**options)`` that makes the tables: a dict of
            dataset name -> split name -> DataFrame.
        options: the loader options, JSON-able; part of the cache key.
        sources: the source files; their size and mtime are part of the disk-cache key, so
            reinstalling a data package invalidates the cache.

    Returns fresh copies, so callers may modify them without corrupting the cache.
    """
    key = {"options": options, "sources": source_fingerprint(*sources)}
    value = _cached(suite, build, json.dumps(key, sort_keys=True))
    return {
        name: {split: frame.copy() for split, frame in splits.items()}
        for name, splits in value.items()
    }


def clear_memory_cache() -> None:
    """Forget the in-process cache (the disk cache stays)."""
    _cached.cache_clear()


def check_splits(splits: Splits, where: str) -> None:
    """Assert a loader produced exactly the three standard splits, each non-empty."""
    if set(splits) != set(SPLITS) or any(len(frame) == 0 for frame in splits.values()):
        sizes = {split: len(frame) for split, frame in splits.items()}
        raise DataError(f"{where}: expected non-empty splits {SPLITS}, got {sizes}")
