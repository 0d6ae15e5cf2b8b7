"""Data fingerprints, the recorded carving of missing splits, and the split seed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from polytask.config import load_config
from polytask.errors import DataError
from polytask.pipeline import prepare
from polytask.tasks import fingerprint
from polytask.tasks.data import load_source
from polytask.tasks.fingerprint import data_changes, data_fingerprint, table_fingerprint
from polytask.tasks.spec import DataSpec
from tests.conftest import tabular_config


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """File loading goes through `datasets`; keep its Arrow cache out of the home folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def _csv(path: Path, n: int, start: int = 0) -> Path:
    ids = range(start, start + n)
    pd.DataFrame({"id": ids, "text": [f"row {i}" for i in ids],
                  "label": ["even" if i % 2 == 0 else "odd" for i in ids]}).to_csv(path,
                                                                                    index=False)
    return path


# ------------------------------------------------------------------------ fingerprints


def test_a_file_is_known_by_its_content_not_its_name(tmp_path: Path) -> None:
    path = _csv(tmp_path / "rows.csv", 20)
    before = data_fingerprint(DataSpec(path=str(path)))
    assert before["files"] == {str(path): fingerprint.file_sha256(path)}
    copy = tmp_path / "elsewhere" / "rows.csv"
    copy.parent.mkdir()
    shutil.copy(path, copy)
    assert data_fingerprint(DataSpec(path=str(copy)))["fingerprint"] == before["fingerprint"]
    _csv(path, 21)  # the same path, other rows
    after = data_fingerprint(DataSpec(path=str(path)))
    assert after["fingerprint"] != before["fingerprint"]
    assert after["files"][str(path)] != before["files"][str(path)]


def test_a_file_is_hashed_once_per_path_size_and_mtime(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = _csv(tmp_path / "rows.csv", 20)
    reads: list[str] = []
    real_open = open
    monkeypatch.setattr(fingerprint, "open", lambda p, *a: reads.append(p) or real_open(p, *a),
                        raising=False)
    first = fingerprint.file_sha256(path)
    assert fingerprint.file_sha256(path) == first and len(reads) == 1
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # touched
    assert fingerprint.file_sha256(path) == first and len(reads) == 2


def test_a_folder_is_known_by_its_files_and_a_missing_file_by_none(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    _csv(folder / "train.csv", 10)
    spec = DataSpec(path=str(folder))
    before = data_fingerprint(spec)
    assert list(before["files"]) == [str(folder / "train.csv")]
    _csv(folder / "test.csv", 5)
    assert data_fingerprint(spec)["fingerprint"] != before["fingerprint"]
    missing = data_fingerprint(DataSpec(files={"train": str(tmp_path / "gone.csv")}))
    assert missing["files"] == {str(tmp_path / "gone.csv"): None}


def test_hub_datasets_are_known_by_id_subset_and_revision() -> None:
    pinned = data_fingerprint(DataSpec(path="glue", subset="sst2", hub=True, revision="abc"))
    assert (pinned["hub"], pinned["subset"], pinned["revision"]) == ("glue", "sst2", "abc")
    other = data_fingerprint(DataSpec(path="glue", subset="sst2", hub=True, revision="def"))
    assert other["fingerprint"] != pinned["fingerprint"] and "files" not in pinned


def test_in_memory_tables_are_hashed_by_rows_order_and_columns() -> None:
    frame = pd.DataFrame({"words": [["a", "b"], ["c"]], "tags": [np.array([1, 2]), None],
                          "y": [0.5, float("nan")]})
    same = table_fingerprint(frame.copy())
    assert table_fingerprint(frame) == same
    edited = frame.copy()
    edited.at[1, "words"] = ["d"]
    assert table_fingerprint(edited) != same
    assert table_fingerprint(frame.iloc[::-1]) != same
    assert table_fingerprint(frame.rename(columns={"y": "z"})) != same
    assert table_fingerprint({"train": frame}) != table_fingerprint({"test": frame})


def test_data_changes_name_each_changed_file_and_row_count() -> None:
    old = {"shared": {"files": {"/d/a.csv": "1" * 64, "/d/b.csv": "2" * 64},
                      "fingerprint": "x", "rows": {"train": 8}}}
    new = {"shared": {"files": {"/d/a.csv": "1" * 64, "/d/b.csv": "3" * 64},
                      "fingerprint": "y", "rows": {"train": 9}}}
    assert data_changes(old, old) == []
    assert data_changes(old, new) == [
        f"shared: file /d/b.csv: sha256 {'2' * 12} -> {'3' * 12}",
        "shared: rows {'train': 8} -> {'train': 9}"]
    assert "no data fingerprint recorded" in data_changes({"shared": {"rows": {}}}, new)[0]


# ------------------------------------------------------------------------ carving


def test_carved_rows_are_recorded_and_replayed_exactly(tmp_path: Path) -> None:
    spec = DataSpec(path=str(_csv(tmp_path / "rows.csv", 50)), max_rows={"test": 3})
    source = load_source("shared", spec, 7, 0.2, 0.1, "data")
    assert set(source.carved_rows) == {"test", "validation"}
    assert len(source.carved_rows["test"]) == 5 and len(source.carved_rows["validation"]) == 10
    assert source.frames["test"]["id"].tolist() == source.carved_rows["test"][:3]
    assert source.frames["validation"]["id"].tolist() == source.carved_rows["validation"]
    replayed = load_source("shared", spec, 123, 0.2, 0.1, "data", source.carved_rows)
    for split, frame in source.frames.items():
        pd.testing.assert_frame_equal(replayed.frames[split], frame)
    assert replayed.carved_rows == source.carved_rows
    assert load_source("shared", spec, 123, 0.2, 0.1, "data").carved_rows != source.carved_rows


def test_recorded_rows_that_no_longer_fit_are_refused(tmp_path: Path) -> None:
    spec = DataSpec(path=str(_csv(tmp_path / "rows.csv", 20)))
    with pytest.raises(DataError, match=r"splits\.json do not fit"):
        load_source("shared", spec, 0, 0.1, 0.1, "data", {"test": [3, 25]})
    with pytest.raises(DataError, match=r"splits\.json do not fit"):
        load_source("shared", spec, 0, 0.1, 0.1, "data",
                    {"test": [3, 4], "validation": [4, 5]})


def test_the_carved_test_split_does_not_move_with_the_training_seed(tabular_file: Path) -> None:
    config = tabular_config(tabular_file)
    records = [prepare(load_config(config, [f"train.seed={seed}"]))[0].record["sources"]
               for seed in (0, 1)]
    assert records[0]["shared"]["carved_rows"] == records[1]["shared"]["carved_rows"]
    assert records[0]["shared"]["split_seed"] == 0
    moved = prepare(load_config(config, ["train.split_seed=1"]))[0].record["sources"]
    assert moved["shared"]["carved_rows"]["test"] != records[0]["shared"]["carved_rows"]["test"]


def test_splits_record_the_data_fingerprint(tabular_file: Path) -> None:
    record = prepare(load_config(tabular_config(tabular_file)))[0].record["sources"]["shared"]
    assert record["files"] == {str(tabular_file): fingerprint.file_sha256(tabular_file)}
    assert record["fingerprint"] == data_fingerprint(DataSpec(path=str(tabular_file)))[
        "fingerprint"]
