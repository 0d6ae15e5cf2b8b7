"""What every merging method shares: the state-dict type, the `Merger` interface, the data the
data-driven methods get, input validation and the method registry.

A merger takes the pretrained backbone's state dict (`base`) and one fine-tuned state dict per
task (`experts`, keyed by task name) and returns one merged state dict. State dicts hold the
**backbone only**, with the backbone module's own keys (no ``backbone.`` prefix); task heads
are never merged.

Subclasses implement `_merge`; the public `merge` checks the inputs first (every expert has
exactly the base's parameters with the base's shapes; data is given when `needs_data`), so
a bad input fails with a clear error before any work, and nothing is written.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, overload

import torch
from safetensors import safe_open
from torch import Tensor, nn

from polytask.errors import CheckpointError, ConfigError
from polytask.models.inputs import Encoded
from polytask.registry import Registry
from polytask.tasks.kinds import TaskKind
from polytask.train.checkpoint import save_weights

__all__ = ["MERGERS", "MergeData", "MergeTask", "Merger", "StateDict", "TensorwiseMerger",
           "check_density", "check_experts"]

StateDict = dict[str, Tensor]
#: every merging method, by name (one file per method in this package registers itself)
MERGERS: Registry[type[Merger]] = Registry("merging method")


@dataclass
class MergeTask:
    """One task's expert head and merge data, for the data-driven methods."""

    name: str
    #: the expert's trained head (features -> outputs), frozen
    head: nn.Module
    #: the task's kind: `loss(outputs, labels)`, `level`, metrics
    kind: TaskKind
    #: a fresh iterator of (inputs, labels) batches of this task's merge data: rows of the
    #: `train` split for fisher/regmean; unlabelled inputs (labels None) of
    #: `MergeData.unlabelled_split` for adamerging/surgery
    batches: Callable[[], Iterator[tuple[Encoded, Tensor | None]]]


@dataclass
class MergeData:
    """What a data-driven merger may use besides the weights (built by the merge regime)."""

    #: a fresh backbone module holding the given weights (keys as in the base state dict);
    #: `module(inputs, level)` -> features (level = task.kind.level), in eval mode
    backbone: Callable[[StateDict], nn.Module]
    tasks: dict[str, MergeTask]
    #: which split the unlabelled inputs of adamerging/surgery come from
    unlabelled_split: str = "validation"


def check_experts(base: Mapping[str, Tensor], experts: Mapping[str, Mapping[str, Tensor]]
                  ) -> None:
    """Raise `ConfigError` unless there is at least one expert and every expert has exactly
    the parameters of `base`, each of the base's shape (the message names expert and
    parameter)."""
    if not experts:
        raise ConfigError("merge: no experts given; pass one fine-tuned state dict per task.")
    shapes = {name: tuple(tensor.shape) for name, tensor in base.items()}
    for expert, state in experts.items():
        missing = [name for name in shapes if name not in state]
        if missing:
            raise ConfigError(
                f"merge: expert {expert!r} has no parameter {missing[0]!r} "
                f"({len(missing)} missing); every expert must be fine-tuned from the base "
                "backbone and keep all of its parameters.")
        extra = [name for name in state if name not in shapes]
        if extra:
            raise ConfigError(
                f"merge: expert {expert!r} has parameter {extra[0]!r} that the base does not "
                f"have ({len(extra)} extra); the experts must share the base's architecture.")
        for name, shape in shapes.items():
            if tuple(state[name].shape) != shape:
                raise ConfigError(
                    f"merge: expert {expert!r} parameter {name!r} has shape "
                    f"{tuple(state[name].shape)} but the base has {shape}; the experts must "
                    "share the base's architecture.")


def check_density(density: float, method: str) -> float:
    """`density` (the fraction of entries kept) if it lies in (0, 1], else `ConfigError`."""
    if not 0.0 < density <= 1.0:
        raise ConfigError(
            f"{method}: density={density!r} is outside (0, 1]; it is the fraction of each task "
            "vector's entries that is kept, e.g. 0.2.")
    return float(density)


class Merger(ABC):
    """One merging method. Hyperparameters are constructor keywords (typed, defaulted).

    Subclasses implement `_merge(base, experts, data)` and may call `note()` to record what
    `report()` returns (fallbacks, the split that was used...)."""

    #: True: `merge()` requires `data`
    needs_data: ClassVar[bool] = False
    #: True: its data are unlabelled inputs of `MergeData.unlabelled_split` (validation by
    #: default); False: labelled rows of the `train` split
    unlabelled_inputs: ClassVar[bool] = False
    #: the small documented grid the regime searches on validation, e.g.
    #: ``{"scale": [0.3, 0.5, 0.7, 1.0]}`` (keys are constructor keywords)
    grid: ClassVar[Mapping[str, Sequence[Any]]] = {}

    def __init__(self) -> None:
        self._notes: list[str] = []

    @property
    def name(self) -> str:
        """The registered name (or the class name for an unregistered subclass)."""
        for name in MERGERS:
            if MERGERS.get(name) is type(self):
                return name
        return type(self).__name__

    def merge(self, base: StateDict, experts: Mapping[str, StateDict],
              data: MergeData | None = None) -> StateDict:
        """The merged state dict (same keys and shapes as `base`, plus any documented extras).

        Raises:
            ConfigError: an expert's parameters differ from the base's, or the method needs
                data and `data` is None.
        """
        check_experts(base, experts)
        if self.needs_data and data is None:
            raise ConfigError(
                f"merge method {self.name!r} needs data (each task's training batches) but "
                "none was given; pass `data=` (the merge regime builds it from the config) or "
                "pick a data-free method (average, task_arithmetic, ties, dare).")
        self._notes = []
        return self._merge(base, experts, data)

    @abstractmethod
    def _merge(self, base: StateDict, experts: Mapping[str, StateDict],
               data: MergeData | None) -> StateDict:
        """The merge itself, on inputs `merge` has checked."""

    def note(self, text: str) -> None:
        """Record one line for `report()`."""
        self._notes.append(text)

    def report(self) -> list[str]:
        """Notes from the last merge, e.g. fallbacks ("embeddings.word: averaged (RegMean
        handles nn.Linear only)")."""
        return list(self._notes)


class TensorwiseMerger(Merger):
    """A data-free method that merges each tensor on its own (average, task_arithmetic, ties,
    dare): subclasses implement `merge_tensor(name, base, experts) -> Tensor`; `merge()` loops
    over the keys, and `merge_files()` streams tensor by tensor from safetensors files (peak
    memory ≈ one model + N copies of the largest tensor).

    Non-floating tensors (integer buffers such as position ids) are copied from the base."""

    @abstractmethod
    def merge_tensor(self, name: str, base: Tensor, experts: Sequence[Tensor]) -> Tensor:
        """The merged tensor of parameter `name` (experts in the order of the expert dict)."""

    def _merge_one(self, name: str, base: Tensor, experts: Sequence[Callable[[], Tensor]]
                   ) -> Tensor:
        """Merge one tensor whose experts are loaded on access, one at a time; half
        precision is merged in float32."""
        if not base.is_floating_point():
            return base.clone()
        dtype = torch.float32 if base.dtype in (torch.float16, torch.bfloat16) else base.dtype
        merged = self.merge_tensor(name, base.to(dtype), _Loaded(experts, dtype))
        return merged.to(base.dtype)

    def _merge(self, base: StateDict, experts: Mapping[str, StateDict],
               data: MergeData | None) -> StateDict:
        return {name: self._merge_one(name, tensor, [partial(_item, e, name)
                                                     for e in experts.values()])
                for name, tensor in base.items()}

    def merge_files(self, base_file: str | Path, expert_files: Mapping[str, str | Path],
                    out_file: str | Path, prefix: str = "") -> None:
        """Merge safetensors files tensor by tensor and write the result to `out_file`.

        Only keys that start with `prefix` are merged (e.g. ``"backbone."`` for a whole-model
        file); the prefix is kept in the output keys. Each expert file must hold exactly the
        base's such keys, with the base's shapes (checked on the file headers before any
        tensor is read). The output is written atomically; on any error nothing is written.
        """
        base_file = Path(base_file)
        expert_files = {name: Path(path) for name, path in expert_files.items()}
        keys = _header(base_file, prefix, "base")
        check_experts(keys, {name: _header(path, prefix, f"expert {name!r}")
                             for name, path in expert_files.items()})
        self._notes = []
        merged: StateDict = {}
        for key in keys:
            merged[key] = self._merge_one(
                key, _read(base_file, key, "base"),
                [partial(_read, path, key, f"expert {name!r}")
                 for name, path in expert_files.items()])
        save_weights(merged, Path(out_file))


class _Loaded(Sequence[Tensor]):
    """The experts' tensors of one parameter, each loaded (and cast) when it is accessed and
    not kept: a merge that reads them one at a time holds one of them at a time."""

    def __init__(self, loaders: Sequence[Callable[[], Tensor]], dtype: torch.dtype) -> None:
        self._loaders = loaders
        self._dtype = dtype

    def __len__(self) -> int:
        return len(self._loaders)

    @overload
    def __getitem__(self, index: int) -> Tensor: ...
    @overload
    def __getitem__(self, index: slice) -> list[Tensor]: ...
    def __getitem__(self, index: int | slice) -> Tensor | list[Tensor]:
        if isinstance(index, slice):
            return [load().to(self._dtype) for load in self._loaders[index]]
        return self._loaders[index]().to(self._dtype)


def _item(state: Mapping[str, Tensor], name: str) -> Tensor:
    return state[name]


@contextmanager
def _opened(path: Path, what: str) -> Iterator[Any]:
    """A `safe_open` handle on `path`; `CheckpointError` naming `what` if it is unreadable."""
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(
            f"merge: {what} weights file {path} cannot be read ({error}); pass a safetensors "
            "file (as written by polytask or safetensors.torch.save_file).") from None
    with handle as opened:
        yield opened


def _header(path: Path, prefix: str, what: str) -> dict[str, Tensor]:
    """The file's tensors whose key starts with `prefix`, as shape-only meta tensors."""
    with _opened(path, what) as handle:
        return {key: torch.empty(handle.get_slice(key).get_shape(), device="meta")
                for key in handle.keys() if key.startswith(prefix)}  # noqa: SIM118


def _read(path: Path, key: str, what: str) -> Tensor:
    """One tensor of a safetensors file, copied out of the file's memory map, which is
    closed at once: a merge that reads N files tensor by tensor never keeps their pages
    mapped (they would count in its resident memory)."""
    with _opened(path, what) as handle:
        return handle.get_tensor(key).clone()
