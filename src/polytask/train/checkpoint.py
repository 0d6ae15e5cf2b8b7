"""Checkpoints: written atomically, verified by checksum, loaded without unpickling code.

A checkpoint is a folder `step-NNNNNNN/` holding `model.safetensors` (weights),
`state.pt` (optimizer, scheduler, sampler, data position, balancer and RNG state; loaded
with `weights_only=True`) and `manifest.json` (the step and a SHA-256 of each file). It is
written into a temporary folder and renamed into place, so a crash never leaves a
half-written checkpoint under the final name; a full disk removes the half-written folder
and says so (see `polytask.files`); a checkpoint whose files do not match their checksums
is reported and skipped in favour of the previous one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from polytask.errors import CheckpointError
from polytask.files import reporting, writing

PREFIX = "step-"
#: What to do when a checkpoint cannot be written for lack of space.
_FULL_DISK_HINT = ("the previous checkpoint is kept: free some space there (or lower "
                   "train.keep_checkpoints), then continue with --resume")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _separate(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors that share no storage (safetensors refuses shared ones)."""
    seen: set[int] = set()
    tensors = {}
    for name, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr()
        tensors[name] = tensor.detach().cpu().clone() if ptr in seen else tensor.detach().cpu()
        seen.add(ptr)
    return {k: v.contiguous() for k, v in tensors.items()}


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """Save a state dict to safetensors atomically (a full disk is a StorageError)."""
    with writing(path) as tmp:
        save_file(_separate(state), str(tmp))


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """Weights from a safetensors file, with a clear error when it cannot be read."""
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(f"weights file {path}: cannot be read ({error})") from None


def save(directory: Path, step: int, weights: dict[str, torch.Tensor],
         state: dict[str, Any], keep: int) -> Path:
    """Write checkpoint `step` under `directory` atomically; keep the newest `keep`.

    If the disk fills up (or a quota or file size limit is reached) the half-written
    folder is removed, the previous checkpoints are kept and a StorageError names the file.
    """
    final = directory / f"{PREFIX}{step:07d}"
    _remove_leftovers(directory)
    with writing(final, _FULL_DISK_HINT) as tmp:
        tmp.mkdir()
        with reporting(final / "model.safetensors", _FULL_DISK_HINT):
            save_file(_separate(weights), str(tmp / "model.safetensors"))
        # to a Python file, so torch keeps the OSError of a failed write as the context
        with reporting(final / "state.pt", _FULL_DISK_HINT), \
                (tmp / "state.pt").open("wb") as handle:
            torch.save(state, handle)
        manifest = {"step": step, "sha256": {f: sha256(tmp / f) for f in ("model.safetensors",
                                                                         "state.pt")}}
        with reporting(final / "manifest.json", _FULL_DISK_HINT):
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
            _fsync_dir(tmp)
    for old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _remove_leftovers(directory: Path) -> None:
    """Remove temporary folders of checkpoints whose writer was killed mid-write."""
    if directory.exists():
        for leftover in directory.glob(f".{PREFIX}*.tmp*"):
            shutil.rmtree(leftover, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    for child in path.iterdir():
        with child.open("rb") as handle:
            os.fsync(handle.fileno())


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint folders, oldest first."""
    if not directory.exists():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def verify(path: Path) -> None:
    """Raise a CheckpointError naming the file if `path` is incomplete or corrupt."""
    manifest_path = path / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"checkpoint {path}: unreadable manifest.json ({error})") from None
    for name, expected in manifest["sha256"].items():
        file = path / name
        if not file.exists():
            raise CheckpointError(f"checkpoint {path}: {name} is missing")
        if sha256(file) != expected:
            raise CheckpointError(f"checkpoint {file}: checksum mismatch (truncated or "
                                  "corrupted); it will not be used")


def load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and training state of a verified checkpoint."""
    verify(path)
    weights = load_weights_file(path / "model.safetensors")
    try:
        state = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
    except Exception as error:  # weights_only refuses anything but tensors and plain data
        raise CheckpointError(f"checkpoint {path}: state.pt cannot be loaded safely "
                              f"({type(error).__name__}: {error})") from None
    return weights, state


def load_latest(directory: Path, warn: Any = print) -> tuple[int, dict[str, torch.Tensor],
                                                             dict[str, Any]] | None:
    """The newest checkpoint that verifies, falling back past corrupt ones (each reported)."""
    for path in reversed(list_checkpoints(directory)):
        try:
            weights, state = load(path)
        except CheckpointError as error:
            warn(f"{error}; trying the previous checkpoint")
            continue
        return int(json.loads((path / "manifest.json").read_text())["step"]), weights, state
    return None
