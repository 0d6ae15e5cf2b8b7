"""Checkpoints: written atomically, verified by checksum, loaded without unpickling code.

A checkpoint is a folder `step-NNNNNNN/` holding `model.safetensors` (weights),
`state.pt` (optimizer, scheduler, sampler, data position, balancer and RNG state; loaded
with `weights_only=True`) and `manifest.json` (the step and a SHA-256 of each file). It is
written into a temporary folder and renamed into place, so a crash never leaves a
half-written checkpoint under the final name; a checkpoint whose files do not match their
checksums is reported and skipped in favour of the previous one.
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

PREFIX = "step-"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """Save a state dict to safetensors atomically (shared tensors are cloned apart)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    seen: set[int] = set()
    tensors = {}
    for name, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr()
        tensors[name] = tensor.detach().cpu().clone() if ptr in seen else tensor.detach().cpu()
        seen.add(ptr)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """Weights from a safetensors file, with a clear error when it cannot be read."""
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(f"weights file {path}: cannot be read ({error})") from None


def save(directory: Path, step: int, weights: dict[str, torch.Tensor],
         state: dict[str, Any], keep: int) -> Path:
    """Write checkpoint `step` under `directory` atomically; keep the newest `keep`."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{PREFIX}{step:07d}"
    tmp = directory / f".{final.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_weights(weights, tmp / "model.safetensors")
    torch.save(state, tmp / "state.pt")
    manifest = {"step": step, "sha256": {f: sha256(tmp / f) for f in ("model.safetensors",
                                                                     "state.pt")}}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


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
