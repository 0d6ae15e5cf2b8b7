"""A full disk (or a quota or file size limit) while writing: a clear StorageError naming the
file, no half-written temporary files left behind, and the previous good files kept."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from polytask.cli import app
from polytask.errors import StorageError
from polytask.train import checkpoint
from polytask.train.results import write_json
from tests.conftest import tabular_config

SMALL = {"w": torch.arange(4.0)}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)


def _only_step_one_loads(directory: Path) -> None:
    found = checkpoint.load_latest(directory)
    assert found is not None
    step, weights, state = found
    assert step == 1 and torch.equal(weights["w"], SMALL["w"]) and state == {"step": 1}
    assert _leftovers(directory) == []


# Writes a good checkpoint, then lowers the file size limit (with SIGXFSZ ignored, a write
# past the limit fails with EFBIG) and tries a checkpoint whose weights, then whose state,
# and a JSON file that is too big; prints each StorageError message as a JSON line.
_OVER_THE_LIMIT = textwrap.dedent("""
    import json, resource, signal, sys
    from pathlib import Path
    import torch
    from polytask.errors import StorageError
    from polytask.train import checkpoint
    from polytask.train.results import write_json

    folder = Path(sys.argv[1])
    small, big = {"w": torch.arange(4.0)}, {"w": torch.zeros(100_000)}
    checkpoint.save(folder / "checkpoints", 1, small, {"step": 1}, keep=5)
    write_json(folder / "results.json", {"kept": True})
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
    attempts = [
        lambda: checkpoint.save(folder / "checkpoints", 2, big, {"step": 2}, keep=5),
        lambda: checkpoint.save(folder / "checkpoints", 3, small, {"step": big}, keep=5),
        lambda: write_json(folder / "results.json", list(range(100_000))),
    ]
    for attempt in attempts:
        try:
            attempt()
            print(json.dumps("no error"))
        except StorageError as error:
            print(json.dumps(str(error)))
""")


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_file_size_limit_gives_a_clear_error_and_keeps_the_previous_files(
        tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-c", _OVER_THE_LIMIT, str(tmp_path)],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    weights, state, results = (json.loads(line) for line in run.stdout.splitlines())
    checkpoints = tmp_path / "checkpoints"
    assert weights.startswith("file size limit exceeded while writing "
                              f"{checkpoints / 'step-0000002' / 'model.safetensors'}; "
                              "the previous checkpoint is kept")
    assert state.startswith("file size limit exceeded while writing "
                            f"{checkpoints / 'step-0000003' / 'state.pt'};")
    assert results.startswith(f"file size limit exceeded while writing {tmp_path / 'results.json'}")
    assert [p.name for p in checkpoint.list_checkpoints(checkpoints)] == ["step-0000001"]
    _only_step_one_loads(checkpoints)
    assert json.loads((tmp_path / "results.json").read_text()) == {"kept": True}
    assert _leftovers(tmp_path) == []


def _failing_torch_save(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    def save(obj: Any, target: Any) -> None:
        target.write(b"half a file")
        raise error

    monkeypatch.setattr(checkpoint.torch, "save", save)


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    # torch.save to a path keeps no errno; this is what it says when the disk is full
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),
    RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
], ids=["oserror", "unexpected-pos", "stream-writer"])
def test_a_full_disk_while_saving_state_is_reported_and_cleaned(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    checkpoint.save(tmp_path, 1, SMALL, {"step": 1}, keep=5)
    _failing_torch_save(monkeypatch, error)
    with pytest.raises(StorageError) as raised:
        checkpoint.save(tmp_path, 2, SMALL, {"step": 2}, keep=5)
    monkeypatch.undo()
    assert str(raised.value).startswith(
        f"no space left on device while writing {tmp_path / 'step-0000002' / 'state.pt'}; "
        "the previous checkpoint is kept: free some space there")
    _only_step_one_loads(tmp_path)


def test_a_full_disk_while_saving_weights_is_reported_and_cleaned(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint.save(tmp_path, 1, SMALL, {"step": 1}, keep=5)

    def save_file(tensors: Any, filename: str) -> None:
        Path(filename).write_bytes(b"half a file")
        raise Exception("Error while serializing: I/O error: No space left on device "
                        "(os error 28)")  # how safetensors words it

    monkeypatch.setattr(checkpoint, "save_file", save_file)
    with pytest.raises(StorageError, match=r"no space left on device while writing .*"
                                           r"step-0000002.model\.safetensors"):
        checkpoint.save(tmp_path, 2, SMALL, {"step": 2}, keep=5)
    with pytest.raises(StorageError, match=r"no space left on device while writing .*best"):
        checkpoint.save_weights(SMALL, tmp_path / "best" / "model.safetensors")
    monkeypatch.undo()
    _only_step_one_loads(tmp_path)


def test_a_quota_reached_when_flushing_keeps_the_previous_json(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Some file systems report a full disk only when the data is flushed."""
    path = tmp_path / "results.json"
    write_json(path, {"kept": True})

    def fsync(descriptor: int) -> None:
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(StorageError, match=re.escape(f"disk quota exceeded while writing {path};")):
        write_json(path, {"kept": False})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"kept": True}
    assert _leftovers(tmp_path) == []


def test_other_write_errors_are_not_called_a_full_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint.save(tmp_path, 1, SMALL, {"step": 1}, keep=5)
    _failing_torch_save(monkeypatch, TypeError("cannot pickle 'generator' object"))
    with pytest.raises(TypeError, match="cannot pickle"):
        checkpoint.save(tmp_path, 2, SMALL, {"step": 2}, keep=5)
    monkeypatch.undo()
    _only_step_one_loads(tmp_path)


def test_a_killed_writer_leaves_no_temporary_checkpoint_behind(tmp_path: Path) -> None:
    leftover = tmp_path / ".step-0000003.tmp99999"
    leftover.mkdir(parents=True)
    (leftover / "state.pt").write_bytes(b"half a file")
    checkpoint.save(tmp_path, 1, SMALL, {"step": 1}, keep=5)
    _only_step_one_loads(tmp_path)


def test_train_on_a_full_disk_exits_2_and_keeps_the_last_checkpoint(
        tmp_path: Path, tabular_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tabular_config(tabular_file, max_steps=12,
                                                    checkpoint_every=4)))
    run = tmp_path / "run"
    original = torch.save

    def fills_the_disk_at_step_8(obj: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        if "step-0000008" in str(getattr(target, "name", target)):
            raise OSError(errno.ENOSPC, "No space left on device")
        original(obj, target, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fills_the_disk_at_step_8)
    result = CliRunner().invoke(app, ["train", str(config), "--run-dir", str(run)])
    monkeypatch.undo()
    printed = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert (f"error: no space left on device while writing "
            f"{run / 'checkpoints' / 'step-0000008' / 'state.pt'}; the previous checkpoint is "
            "kept") in printed
    assert "unexpected" not in printed
    found = checkpoint.load_latest(run / "checkpoints")
    assert found is not None and found[0] == 4
    assert _leftovers(run) == []
