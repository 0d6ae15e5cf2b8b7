"""Task data: load tables, check columns, carve missing splits, encode inputs and labels.

Sources are tables: the run's shared dataset (one row labelled for several tasks) and each
task's own dataset. Every source is loaded once, split into train/validation/test (splits
the dataset lacks are carved deterministically from train with the run's seed, and the
carving is recorded), checked against the tasks that read it, and encoded once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from polytask.errors import DataError
from polytask.models.inputs import Encoded, collate
from polytask.tasks.kinds import IGNORE, TaskKind
from polytask.tasks.spec import SPLITS, DataSpec, Task

SHARED = "shared"
_ALIASES = {"validation": ("validation", "valid", "val", "dev"), "test": ("test",),
            "train": ("train",)}
_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json",
             ".parquet": "parquet"}


def _to_frame(table: Any, where: str) -> pd.DataFrame:
    if isinstance(table, pd.DataFrame):
        return table.reset_index(drop=True)
    if hasattr(table, "to_pandas"):
        return table.to_pandas()
    if isinstance(table, dict):
        try:
            return pd.DataFrame(table)
        except ValueError as error:
            raise DataError(f"{where}: cannot make a table from the columns: {error}") from None
    raise DataError(f"{where}: unsupported data type {type(table).__name__}; give a DataSpec, a "
                    "DataFrame, a datasets Dataset/DatasetDict or a dict of split -> table")


def _read_file(path: Path, where: str) -> pd.DataFrame:
    from datasets import load_dataset

    builder = _BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"{where}: cannot read {str(path)!r}: use .csv, .tsv, .json, .jsonl "
                        "or .parquet")
    kwargs: dict[str, Any] = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    if path.stat().st_size == 0:
        raise DataError(f"{where}: file {str(path)!r} is empty; give it a header and rows, or "
                        "leave the split out (a missing validation/test split is carved from "
                        "train)")
    try:
        dataset = load_dataset(builder, data_files={"rows": str(path)}, split="rows", **kwargs)
    except Exception as error:  # datasets raises many types for a malformed file
        if "corresponds to no data" in str(error):  # a CSV header without rows
            raise DataError(f"{where}: file {str(path)!r} has no rows; add rows, or leave the "
                            "split out (a missing validation/test split is carved from "
                            "train)") from None
        raise DataError(f"{where}: cannot read {str(path)!r}: {error}") from None
    return dataset.to_pandas()


def read_spec(spec: DataSpec, where: str) -> dict[str, pd.DataFrame]:
    """The splits of a file/hub dataset, as named by the dataset."""
    if spec.files:
        frames = {}
        for split, file in spec.files.items():
            path = Path(file)
            if not path.exists():
                raise DataError(f"{where}.files.{split}: file {file!r} does not exist")
            frames[split] = _read_file(path, f"{where}.files.{split}")
        return frames
    if not spec.path:
        raise DataError(f"{where}: give `path` (a file, folder or hub id) or `files`")
    path = Path(spec.path)
    if path.is_file():
        return {"train": _read_file(path, where)}
    from datasets import load_dataset, load_from_disk

    if path.is_dir() and (path / "dataset_dict.json").exists():
        loaded = load_from_disk(str(path))
    elif path.is_dir() or spec.hub:
        kwargs: dict[str, Any] = {}
        if spec.revision:
            kwargs["revision"] = spec.revision
        if spec.trust_remote_code:
            kwargs["trust_remote_code"] = True
        try:
            loaded = load_dataset(str(path) if path.is_dir() else spec.path, spec.subset, **kwargs)
        except Exception as error:
            raise DataError(f"{where}: cannot load dataset {spec.path!r}: {error}") from None
    else:
        raise DataError(f"{where}.path: {spec.path!r} is neither a local file nor a folder; set "
                        "`hub: true` to load it from the Hugging Face hub")
    return {name: split.to_pandas() for name, split in loaded.items()}


def _in_memory_splits(data: Any, where: str) -> dict[str, pd.DataFrame]:
    if isinstance(data, Mapping) and data and all(k in SPLITS or isinstance(v, pd.DataFrame)
                                                  for k, v in data.items()) and not all(
            isinstance(v, list) for v in data.values()):
        return {str(k): _to_frame(v, f"{where}.{k}") for k, v in data.items()}
    if hasattr(data, "keys") and hasattr(data, "items") and type(data).__name__.endswith(
            "DatasetDict"):
        return {str(k): _to_frame(v, f"{where}.{k}") for k, v in data.items()}
    return {"train": _to_frame(data, where)}


def _name_splits(frames: dict[str, pd.DataFrame], spec: DataSpec | None,
                 where: str) -> dict[str, pd.DataFrame]:
    named: dict[str, pd.DataFrame] = {}
    source_of: dict[str, str] = {}  # polytask split -> the dataset's split it reads
    explicit = spec.split_names if spec else {}
    for split in SPLITS:
        candidates = (explicit[split],) if split in explicit else _ALIASES[split]
        found = next((c for c in candidates if c in frames), None)
        if found is None and split in explicit:
            raise DataError(f"{where}.split_names.{split}: the dataset has no split "
                            f"{explicit[split]!r}; it has {sorted(frames)}")
        if found is not None:
            other = next((s for s, name in source_of.items() if name == found), None)
            if other is not None:
                raise DataError(
                    f"{where}.split_names: {other} and {split} would both read the "
                    f"dataset's split {found!r}; map each to its own split, or leave "
                    f"{split} out to carve it from train")
            source_of[split] = found
            named[split] = frames[found]
    if "train" not in named:
        raise DataError(f"{where}: no training split; the dataset has {sorted(frames)}. Map one "
                        "with `split_names: {train: NAME}`.")
    return named


def _apply_spec(frame: pd.DataFrame, spec: DataSpec | None, split: str,
                where: str) -> pd.DataFrame:
    """`rename` and `constant` (`max_rows` is applied after carving, see `load_source`)."""
    if spec is None:
        return frame
    for old, new in spec.rename.items():
        if old not in frame.columns:
            raise DataError(f"{where}.rename: column {old!r} is not in the {split} split; "
                            f"columns: {list(frame.columns)}")
        if new in frame.columns and new not in spec.rename:
            raise DataError(f"{where}.rename: renaming {old!r} to {new!r} would give the "
                            f"{split} split two columns named {new!r}; rename {new!r} too, or "
                            "pick another name")
    frame = frame.rename(columns=spec.rename)
    for column, value in spec.constant.items():
        frame[column] = value
    return frame.reset_index(drop=True)


@dataclass
class Source:
    """One table, split three ways, with a record of which splits were carved."""

    name: str
    frames: dict[str, pd.DataFrame]
    carved: list[str] = field(default_factory=list)


def load_source(name: str, data: Any, seed: int, validation_fraction: float,
                test_fraction: float, where: str) -> Source:
    """Load a table and make sure it has train, validation and test splits."""
    spec = data if isinstance(data, DataSpec) else None
    raw = read_spec(spec, where) if spec else _in_memory_splits(data, where)
    frames = {s: _apply_spec(f, spec, s, where)
              for s, f in _name_splits(raw, spec, where).items()}
    for split, frame in frames.items():
        if len(frame) == 0:
            fix = ("it needs rows to learn from" if split == "train" else
                   "give it rows, or leave it out to carve it from train")
            raise DataError(f"{where}: the {split} split is empty; {fix}")
    carved = []
    rng = np.random.default_rng(seed)
    total = len(frames["train"])  # both fractions are shares of the original train split
    for split, fraction in (("test", test_fraction), ("validation", validation_fraction)):
        if split in frames:
            continue
        train = frames["train"]
        order = rng.permutation(len(train))
        n = max(1, round(total * fraction))
        if len(train) - n < 1:
            raise DataError(f"{where}: the training split has {len(train)} row(s), too few to "
                            f"carve a {split} split; provide one")
        frames[split] = train.iloc[np.sort(order[:n])].reset_index(drop=True)
        frames["train"] = train.iloc[np.sort(order[n:])].reset_index(drop=True)
        carved.append(split)
    if spec is not None:  # after carving, so carved splits are limited too
        frames = {s: f.iloc[: spec.max_rows[s]].reset_index(drop=True)
                  if s in spec.max_rows else f for s, f in frames.items()}
    return Source(name, frames, carved)


def check_columns(task: Task, source: Source) -> None:
    """Every input and label column of `task` exists in every split of its source."""
    import difflib

    for split, frame in source.frames.items():
        for role, columns in (("input", task.input_columns), ("label", task.label_columns)):
            for column in columns:
                if column not in frame.columns:
                    close = difflib.get_close_matches(column, list(map(str, frame.columns)), n=1)
                    hint = f" Did you mean {close[0]!r}?" if close else ""
                    raise DataError(
                        f"tasks.{task.name}.{role}: column {column!r} is not in the {split} "
                        f"split of {source.name!r}.{hint} Columns: {list(frame.columns)}"
                    )


def check_token_lengths(task: Task, frame: pd.DataFrame, split: str) -> None:
    """A token task's tag list has one tag per word of its input row."""
    words, tags = frame[task.input_columns[0]].tolist(), frame[task.label_columns[0]].tolist()
    for i, (row_words, row_tags) in enumerate(zip(words, tags, strict=True)):
        if not isinstance(row_tags, list | tuple | np.ndarray):
            continue  # unlabelled (or malformed: the task kind reports it)
        if not isinstance(row_words, list | tuple | np.ndarray):
            raise DataError(
                f"tasks.{task.name}.input: row {i} of the {split} split holds {row_words!r}; "
                "token classification reads a list of words per row (e.g. ['Ada', 'wrote'])."
            )
        if len(row_words) != len(row_tags):
            raise DataError(
                f"tasks.{task.name}: row {i} of the {split} split has {len(row_words)} word(s) "
                f"but {len(row_tags)} tag(s); give one tag per word (None for an untagged "
                "word)."
            )


def align_token_labels(word_labels: Tensor, word_index: Tensor) -> Tensor:
    """Word-level tags -> sub-word positions: the first sub-word of a word carries its tag,
    every other position is IGNORE."""
    aligned = torch.full(word_index.shape, IGNORE, dtype=torch.long)
    first = word_index >= 0
    rows = torch.arange(word_index.shape[0]).unsqueeze(1).expand_as(word_index)
    columns = word_index.clamp(min=0, max=word_labels.shape[1] - 1)
    aligned[first] = word_labels[rows[first], columns[first]]
    return aligned


@dataclass
class SplitData:
    """One split of one source: encoded inputs and each reading task's labels."""

    inputs: Encoded
    labels: dict[str, Tensor]

    @property
    def size(self) -> int:
        return next(iter(self.inputs.values())).shape[0]


@dataclass
class PreparedData:
    """Everything training and evaluation read: per source, per split, tensors."""

    tasks: list[Task]
    kinds: dict[str, TaskKind]
    task_source: dict[str, str]
    splits: dict[str, dict[str, SplitData]]
    record: dict[str, Any]

    def sources_of(self, tasks: Sequence[str]) -> dict[str, list[str]]:
        """Group task names by the source they read, in task order."""
        groups: dict[str, list[str]] = {}
        for task in tasks:
            groups.setdefault(self.task_source[task], []).append(task)
        return groups

    def train_sizes(self) -> dict[str, int]:
        return {t.name: self.splits[self.task_source[t.name]]["train"].size for t in self.tasks}


class BatchStream:
    """Resumable training batches: each source walks through reshuffled epochs.

    The order of epoch e of source s is a permutation seeded by (seed, s, e), so the state
    is just (epoch, position) per source. Tasks that read the same source in one step
    share the same rows (and one backbone pass).
    """

    def __init__(self, data: PreparedData, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> None:
        self.data = data
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.sources = sorted(data.splits)
        self.position = {s: (0, 0) for s in self.sources}
        self._orders: dict[str, tuple[int, Tensor]] = {}

    def _order(self, source: str, epoch: int) -> Tensor:
        cached = self._orders.get(source)
        if cached is not None and cached[0] == epoch:
            return cached[1]
        generator = torch.Generator().manual_seed(
            self.seed * 1_000_003 + self.sources.index(source) * 10_007 + epoch
        )
        order = torch.randperm(self.data.splits[source]["train"].size, generator=generator)
        self._orders[source] = (epoch, order)
        return order

    def _indices(self, source: str) -> Tensor:
        """This rank's slice of the next global batch (batch_size x world_size rows)."""
        epoch, position = self.position[source]
        parts, needed = [], self.batch_size * self.world_size
        while needed:
            order = self._order(source, epoch)
            take = order[position : position + needed]
            parts.append(take)
            needed -= take.numel()
            position += take.numel()
            if position >= order.numel():
                epoch, position = epoch + 1, 0
        self.position[source] = (epoch, position)
        start = self.rank * self.batch_size
        return torch.cat(parts)[start : start + self.batch_size]

    def next_batch(self, tasks: Sequence[str]) -> dict[str, tuple[Encoded, Tensor]]:
        """`{task: (inputs, labels)}` for the tasks of one step."""
        batch: dict[str, tuple[Encoded, Tensor]] = {}
        for source, names in self.data.sources_of(tasks).items():
            split = self.data.splits[source]["train"]
            indices = self._indices(source)
            inputs = collate(split.inputs, indices)
            for name in names:
                batch[name] = (inputs, trim_labels(split.labels[name][indices], inputs))
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"position": {s: list(p) for s, p in self.position.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.position = {s: (int(p[0]), int(p[1])) for s, p in state["position"].items()}


def trim_labels(labels: Tensor, inputs: Encoded) -> Tensor:
    """Token labels follow the inputs' trimming to the batch's longest sequence."""
    if labels.dtype == torch.long and labels.dim() == 2 and "input_ids" in inputs:
        return labels[:, : inputs["input_ids"].shape[1]]
    return labels


def eval_batches(split: SplitData, tasks: Sequence[str], batch_size: int,
                 rows: range | None = None) -> Iterator[tuple[Encoded, dict[str, Tensor]]]:
    """Batches of a split (or of its `rows`), in order: yields (inputs, {task: labels})."""
    rows = rows if rows is not None else range(split.size)
    for start in range(rows.start, rows.stop, batch_size):
        indices = torch.arange(start, min(start + batch_size, rows.stop))
        inputs = collate(split.inputs, indices)
        yield inputs, {t: trim_labels(split.labels[t][indices], inputs) for t in tasks}
