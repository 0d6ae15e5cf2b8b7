"""Reading an adapter's trained tensors from a source run, for target-task initialisation.

MHR's few-shot adaptation (routing only, on a skill inventory trained on source tasks) and
MPT's target prompts (initialised from the source prompt) both start from a finished source
run: a run directory (`polytask train`, its `model/model.safetensors` and `model/meta.json`)
or a bare `.safetensors` file of the same weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from polytask.errors import CheckpointError


@dataclass
class SourceWeights:
    """The weights of a source run, and its task names (None for a bare weights file)."""

    path: Path
    weights: dict[str, Tensor]
    task_names: list[str] | None

    def tensor(self, suffix: str, field: str) -> Tensor:
        """The one tensor whose state-dict key is `suffix` or ends in `.suffix`; a
        CheckpointError naming `field` when the source has none (or several)."""
        found = [key for key in self.weights if key == suffix or key.endswith(f".{suffix}")]
        if len(found) != 1:
            problem = "has no" if not found else f"has {len(found)} ({', '.join(found)})"
            raise CheckpointError(
                f"{field}: the source {str(self.path)!r} {problem} tensor named *{suffix}: was "
                "it trained with the same adapter, target_modules and backbone?")
        return self.weights[found[0]]

    def stacked(self, prefix: str, field: str) -> Tensor:
        """The tensors keyed `prefix.0`, `prefix.1`, ... (a parameter list), stacked."""
        rows = []
        while True:
            suffix = f"{prefix}.{len(rows)}"
            if not any(key == suffix or key.endswith(f".{suffix}") for key in self.weights):
                break
            rows.append(self.tensor(suffix, field))
        if not rows:
            self.tensor(f"{prefix}.0", field)  # raises, naming what is missing
        return torch.stack(rows)

    def checked(self, suffix: str, shape: tuple[int, ...], field: str) -> Tensor:
        """`tensor(suffix)`, refused with a CheckpointError when its shape is not `shape`."""
        value = self.tensor(suffix, field)
        if tuple(value.shape) != shape:
            raise CheckpointError(
                f"{field}: the source's {suffix} has shape {tuple(value.shape)}, this adapter's "
                f"is {shape}; use the source's adapter options (r, skills, heads, "
                "num_virtual_tokens) and backbone")
        return value


def read_source(path: str | Path, field: str) -> SourceWeights:
    """The weights of a source run directory (or a `.safetensors` file)."""
    location = Path(path)
    weights_file = location / "model" / "model.safetensors" if location.is_dir() else location
    if not weights_file.is_file():
        raise CheckpointError(
            f"{field}: {str(location)!r} is neither a finished run directory (with "
            "model/model.safetensors) nor a .safetensors file; give the source run's folder")
    try:
        weights = load_file(str(weights_file))
    except Exception as error:  # safetensors raises its own (Rust) error types
        raise CheckpointError(f"{field}: cannot read {str(weights_file)!r} ({error}); give a "
                              "finished run directory") from None
    meta = weights_file.parent / "meta.json"
    names = ([task["name"] for task in json.loads(meta.read_text()).get("tasks", [])]
             if location.is_dir() and meta.is_file() else None)
    return SourceWeights(location, weights, names)
