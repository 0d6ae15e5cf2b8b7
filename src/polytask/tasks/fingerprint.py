"""Fingerprints of task data, so that results are never compared across different rows.

A local file is known by the SHA-256 of its bytes (hashed once per process for each
(path, size, mtime)), a folder by its files, a hub dataset by its id, subset and revision,
and an in-memory table by a hash of its rows. The single-task baseline cache is keyed on
these, every run records them in `splits.json`, and `polytask eval` compares the recorded
ones with the data on disk before evaluating.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polytask.tasks.spec import DataSpec

#: What a source's record holds besides its fingerprint: compared key by key.
_DETAILS = ("files", "rows", "datasets")


def digest(*parts: Any) -> str:
    """SHA-256 (hex) of JSON-encoded parts."""
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(json.dumps(part, sort_keys=True, default=str).encode())
    return hasher.hexdigest()


@functools.lru_cache(maxsize=4096)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """The hash of a file; `size` and `mtime_ns` are in the cache key, so an edit rehashes."""
    del size, mtime_ns
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def file_sha256(path: Path) -> str | None:
    """SHA-256 of a file's bytes (None when it does not exist)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return _file_digest(str(path), stat.st_size, stat.st_mtime_ns)


def _local_files(spec: DataSpec) -> dict[str, Path] | None:
    """The files a spec reads, by role (split name, or path inside the folder); None for a
    hub dataset."""
    if spec.files:
        return {split: Path(file).absolute() for split, file in spec.files.items()}
    if not spec.path:
        return {}
    path = Path(spec.path).absolute()
    if spec.hub and not path.exists():
        return None
    if path.is_dir():
        return {str(file.relative_to(path)): file for file in sorted(path.rglob("*"))
                if file.is_file() and not any(part.startswith(".")
                                              for part in file.relative_to(path).parts)}
    return {"path": path}


def spec_fingerprint(spec: DataSpec) -> dict[str, Any]:
    """`{"files": {absolute path: sha256}, "fingerprint": ...}` for local files (a missing
    file hashes to None); `{"hub": id, "subset", "revision", "fingerprint"}` for the hub.

    The fingerprint covers the content and role of each file, not where it lies."""
    files = _local_files(spec)
    if files is None:
        hub = {"hub": spec.path, "subset": spec.subset, "revision": spec.revision}
        return {**hub, "fingerprint": digest(hub)}
    hashes = {role: file_sha256(path) for role, path in files.items()}
    return {"files": {str(files[role]): sha for role, sha in hashes.items()},
            "fingerprint": digest(hashes)}


def _cell_text(value: Any) -> Any:
    """A cell pandas can hash: strings and missing values as they are, anything else (a
    list of words, an array, a number in a mixed column) as JSON."""
    if value is None or isinstance(value, str) or (isinstance(value, float) and value != value):
        return value
    if isinstance(value, np.ndarray) and value.ndim >= 2 and value.dtype != object:
        # an image: its bytes, shape and dtype (JSON of every pixel would be slow)
        return f"{value.dtype}{value.shape}" + hashlib.sha256(
            np.ascontiguousarray(value).tobytes()).hexdigest()
    return json.dumps(value, sort_keys=True,
                      default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))


def _rows_digest(frame: pd.DataFrame) -> str:
    hashable = frame.copy(deep=False)
    for column, dtype in frame.dtypes.items():
        if dtype == np.dtype(object):  # may hold lists, arrays, mixed values
            hashable[column] = frame[column].map(_cell_text)
    rows = pd.util.hash_pandas_object(hashable, index=False).to_numpy()
    return hashlib.sha256(rows.tobytes()).hexdigest()


def table_fingerprint(data: Any) -> str:
    """A hash of in-memory rows: a DataFrame, a `datasets` Dataset (its own fingerprint), a
    mapping of split -> table or column -> values."""
    if isinstance(data, pd.DataFrame):
        return digest([str(c) for c in data.columns], _rows_digest(data))
    if isinstance(data, Mapping):
        return digest({str(key): table_fingerprint(value) for key, value in data.items()})
    if hasattr(data, "_fingerprint"):
        return str(data._fingerprint)
    try:
        return _rows_digest(pd.DataFrame({"values": list(data)}))
    except TypeError:  # not a sequence of values
        return digest(repr(data))


def data_fingerprint(data: Any) -> dict[str, Any]:
    """What identifies a source's data: file hashes, hub id + revision, or a table hash."""
    if isinstance(data, DataSpec):
        return spec_fingerprint(data)
    return {"fingerprint": table_fingerprint(data)}


def _short(value: Any) -> str:
    return value[:12] if isinstance(value, str) else "missing" if value is None else str(value)


def _file_changes(name: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return [f"{name}: file {path}: sha256 {_short(old.get(path))} -> {_short(new.get(path))}"
            for path in sorted(set(old) | set(new)) if old.get(path) != new.get(path)]


def data_changes(recorded: Mapping[str, Mapping[str, Any]],
                 current: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per difference between a run's recorded sources (`splits.json`) and the
    current ones: files (old -> new hash), row counts, hub dataset fingerprints. Details
    missing on either side (e.g. rows before loading) are not compared."""
    changes = []
    for name in sorted(set(recorded) | set(current)):
        old, new = recorded.get(name), current.get(name)
        if old is None or new is None:
            changes.append(f"{name}: {'not in the run' if old is None else 'no longer read'}")
            continue
        if "fingerprint" not in old:
            changes.append(f"{name}: no data fingerprint recorded (a run from an older "
                           "polytask), so its data cannot be checked")
            continue
        details = [key for key in _DETAILS if key in old and key in new and old[key] != new[key]]
        if "files" in details:
            changes += _file_changes(name, old["files"], new["files"])
        if "rows" in details:
            changes.append(f"{name}: rows {old['rows']} -> {new['rows']}")
        if "datasets" in details:
            changes.append(f"{name}: hub dataset fingerprint {old['datasets']} -> "
                           f"{new['datasets']}")
        if old["fingerprint"] != new.get("fingerprint") and not details:
            changes.append(f"{name}: data fingerprint {_short(old['fingerprint'])} -> "
                           f"{_short(new.get('fingerprint'))}")
    return changes
