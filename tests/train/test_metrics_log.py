"""metrics.jsonl, cut back to the resumed step, is rewritten atomically: a failed rewrite
(disk full) keeps every record it had and says which file could not be written."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from polytask.errors import StorageError
from polytask.train.callbacks import MetricsLog


def _log(path: Path) -> MetricsLog:
    log = MetricsLog(path)
    for step in (5, 10, 15):
        log.write({"step": step, "split": "train", "loss/t": 1.0 / step})
    return log


def test_truncate_keeps_the_records_up_to_the_step(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    log = _log(path)
    path.write_text(path.read_text() + '{"step": 20, "spl')  # cut short by a crash
    log.truncate_after(10)
    log.write({"step": 15, "split": "train"})
    log.close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [5, 10, 15]


def test_a_failed_truncate_keeps_the_file_whole(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "metrics.jsonl"
    log = _log(path)
    before = path.read_text()

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(StorageError, match=r"metrics\.jsonl"):
        log.truncate_after(5)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temporary left
