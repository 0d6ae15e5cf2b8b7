"""Task data: load tables, check columns, carve missing splits, encode inputs and labels.

Sources are tables: the run's shared dataset (one row labelled for several tasks) and each
task's own dataset. Every source is loaded once, split into train/validation/test (splits
the dataset lacks are carved deterministically from train with `train.split_seed`, and the
carved rows are recorded), checked against the tasks that read it, and encoded once.
"""

from __future__ import annotations

import csv
import difflib
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from polytask.errors import DataError
from polytask.models.images import BatchTransform
from polytask.models.inputs import Encoded, collate
from polytask.tasks.fields import compose_columns, select_columns
from polytask.tasks.fingerprint import data_fingerprint
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


def _read_npz(path: Path, where: str) -> pd.DataFrame:
    """A NumPy `.npz` file as a table: one column per array, one row per entry of the first
    dimension; an array of more dimensions (images) gives a column of per-row arrays."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            columns = {name: arrays[name] for name in arrays.files}
    except (OSError, ValueError) as error:
        raise DataError(f"{where}: cannot read {str(path)!r} as a NumPy .npz file: {error}"
                        ) from None
    lengths = {name: len(array) if array.ndim else 0 for name, array in columns.items()}
    if not columns or len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise DataError(f"{where}: the arrays of {str(path)!r} must all have the same, non-zero "
                        f"number of rows (first dimension); got {lengths}")
    return pd.DataFrame({name: list(array) if array.ndim > 1 else array
                         for name, array in columns.items()})


def _read_file(path: Path, where: str, spec: DataSpec) -> pd.DataFrame:
    from datasets import load_dataset

    if path.suffix.lower() == ".npz":
        _refuse_csv_options(spec, where, "an .npz file")
        return _read_npz(path, where)
    builder = _BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"{where}: cannot read {str(path)!r}: use .csv, .tsv, .json, .jsonl "
                        "or .parquet (or .npz for arrays)")
    if path.stat().st_size == 0:
        raise DataError(f"{where}: file {str(path)!r} is empty; give it a header and rows, or "
                        "leave the split out (a missing validation/test split is carved from "
                        "train)")
    if builder == "csv":
        return _read_csv(path, where, spec)
    _refuse_csv_options(spec, where, f"a {path.suffix} file")
    try:
        dataset = load_dataset(builder, data_files={"rows": str(path)}, split="rows")
    except Exception as error:  # datasets raises many types for a malformed file
        if "corresponds to no data" in str(error):
            raise _no_rows(path, where) from None
        raise DataError(f"{where}: cannot read {str(path)!r}: {error}") from None
    return dataset.to_pandas()


def read_rows(path: Path, where: str) -> pd.DataFrame:
    """The rows of one CSV/TSV/JSON/JSONL/Parquet file, read as a dataset's file is (the
    CSV separator sniffed, errors naming the file and line): for `polytask predict`."""
    if not path.is_file():
        raise DataError(f"{where}: file {str(path)!r} does not exist")
    return _read_file(path, where, DataSpec())


def _no_rows(path: Path, where: str) -> DataError:
    return DataError(f"{where}: file {str(path)!r} has no rows; add rows, or leave the split "
                     "out (a missing validation/test split is carved from train)")


def _refuse_csv_options(spec: DataSpec, where: str, what: str) -> None:
    """`delimiter`, `encoding` and `missing_values` are CSV settings: refuse them elsewhere
    rather than ignore them."""
    given = [f for f in ("delimiter", "encoding", "missing_values") if getattr(spec, f)]
    if given:
        raise DataError(f"{where}: {', '.join(given)} only apply to .csv/.tsv files, and this "
                        f"is {what}; remove them")


def _read_csv(path: Path, where: str, spec: DataSpec) -> pd.DataFrame:
    """A CSV/TSV file read with pandas: the separator sniffed from the header unless given,
    spaces after a separator dropped, blank lines skipped; an undecodable byte or a row
    with the wrong number of fields is reported with its line."""
    if spec.encoding is None:
        _refuse_binary(path, where)
    encoding = spec.encoding or "utf-8-sig"  # -sig: drop a byte-order mark (Excel writes one)
    delimiter = spec.delimiter or (
        "\t" if path.suffix.lower() == ".tsv" else _sniff_delimiter(path, encoding))
    _check_csv_lines(path, where, delimiter, encoding)
    try:
        frame = pd.read_csv(path, sep=delimiter, encoding=encoding, skipinitialspace=True,
                            na_values=spec.missing_values)
    except pd.errors.EmptyDataError:
        raise _no_rows(path, where) from None
    except pd.errors.ParserError as error:
        raise DataError(f"{where}: cannot read {str(path)!r}: {error}") from None
    if frame.empty:
        raise _no_rows(path, where)
    return frame


def _refuse_binary(path: Path, where: str) -> None:
    """NUL bytes never occur in UTF-8 or Latin-1 text: the file is binary or UTF-16."""
    with path.open("rb") as handle:
        if b"\x00" in handle.read(1 << 16):
            raise DataError(f"{where}: cannot read {str(path)!r}: it holds NUL bytes, so it is "
                            "not CSV text: a binary file (a spreadsheet: export it as CSV) or "
                            "UTF-16 text (set `encoding: utf-16`)")


def _sniff_delimiter(path: Path, encoding: str) -> str:
    """',' unless the header line has no comma and clearly uses ';', a tab or '|' (as the
    first lines confirm): a ';'-separated file is then not read as one column."""
    with path.open(encoding=encoding, errors="replace", newline="") as handle:
        sample = "".join(itertools.islice(handle, 20))
    header = sample.splitlines()[0] if sample else ""
    if "," in header:
        return ","
    used = [d for d in ";\t|" if d in header]
    if len(used) == 1:  # the header alone decides (a ragged row below cannot mislead it)
        return used[0]
    try:
        found = csv.Sniffer().sniff(sample, delimiters=";\t|").delimiter
    except csv.Error:
        return ","
    return found if found in header else ","


def _check_csv_lines(path: Path, where: str, delimiter: str, encoding: str) -> None:
    """Every line decodes and has the header's number of fields (blank lines are skipped)."""
    shown = {",": "','", "\t": "a tab"}.get(delimiter, repr(delimiter))
    try:
        with path.open(encoding=encoding, newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter, skipinitialspace=True)
            width = None
            for row in reader:
                if not any(field.strip() for field in row):
                    continue
                if width is None:
                    width = len(row)
                elif len(row) != width:
                    raise DataError(
                        f"{where}: file {str(path)!r}, line {reader.line_num}: {len(row)} "
                        f"field(s) separated by {shown}, but the header has {width}. Fix that "
                        "line (a value missing, or a value holding the separator without "
                        "quotes), or set `delimiter` if the file uses another separator.")
    except UnicodeDecodeError:
        line, byte = _undecodable(path, encoding)
        name = "UTF-8" if encoding == "utf-8-sig" else encoding
        raise DataError(
            f"{where}: file {str(path)!r} is not {name} text: line {line} holds the byte(s) "
            f"{byte!r}. Set `encoding: latin-1` (or cp1252, the file's real encoding) in this "
            "data section, or save the file as UTF-8.") from None
    except csv.Error as error:
        raise DataError(f"{where}: file {str(path)!r}, line {reader.line_num}: {error}") from None


def _undecodable(path: Path, encoding: str) -> tuple[int, bytes]:
    """The line number and bytes of the first undecodable character."""
    raw = path.read_bytes()
    try:
        raw.decode(encoding)
    except UnicodeDecodeError as error:
        return raw.count(b"\n", 0, error.start) + 1, raw[error.start:error.end]
    return 0, b""


def read_spec(spec: DataSpec, where: str) -> dict[str, pd.DataFrame]:
    """The splits of a file/hub dataset, as named by the dataset."""
    if spec.files:
        frames = {}
        for split, file in spec.files.items():
            path = Path(file)
            if not path.exists():
                raise DataError(f"{where}.files.{split}: file {file!r} does not exist")
            frames[split] = _read_file(path, f"{where}.files.{split}", spec)
        return frames
    if not spec.path:
        raise DataError(f"{where}: give `path` (a file, folder or hub id) or `files`")
    path = Path(spec.path)
    if path.is_file():
        return {"train": _read_file(path, where, spec)}
    _refuse_csv_options(spec, where, "a dataset folder or hub dataset")
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
    frames = {name: split.to_pandas() for name, split in loaded.items()}
    for name, split in loaded.items():  # what `load_source` records of a hub dataset
        frames[name].attrs["datasets_fingerprint"] = getattr(split, "_fingerprint", None)
    return frames


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
    carved = spec.carve if spec else []
    for split in (s for s in SPLITS if s not in carved):
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
    for extra, found in (spec.extra_splits if spec else {}).items():
        if found not in frames:
            raise DataError(f"{where}.extra_splits.{extra}: the dataset has no split {found!r}; "
                            f"it has {sorted(frames)}")
        if found in source_of.values():
            raise DataError(f"{where}.extra_splits.{extra}: the dataset's split {found!r} is "
                            "already read as one of train/validation/test; pick another")
        named[extra] = frames[found]
    return named


def _apply_spec(frame: pd.DataFrame, spec: DataSpec | None, split: str,
                where: str) -> pd.DataFrame:
    """`rename` and `constant` (`max_rows` is applied after carving, see `load_source`)."""
    if spec is None:
        return frame
    if spec.columns:
        frame = select_columns(frame, spec.columns, split, where)
    if spec.compose:
        frame = compose_columns(frame, spec.compose, split, where)
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
    """One table, split three ways, with a record of which splits were carved (and which
    rows of the original train split each holds) and of what data it was read from."""

    name: str
    frames: dict[str, pd.DataFrame]
    carved: list[str] = field(default_factory=list)
    carved_rows: dict[str, list[int]] = field(default_factory=dict)
    origin: dict[str, Any] = field(default_factory=dict)


def _replayed_rows(recorded: Sequence[int], remaining: np.ndarray, split: str,
                   where: str) -> np.ndarray:
    """Positions in the current train split of the recorded original-train rows."""
    wanted = np.asarray(recorded, dtype=np.int64)
    positions = np.searchsorted(remaining, wanted)
    inside = positions < len(remaining)
    if (wanted.size == 0 or np.unique(wanted).size != wanted.size or not inside.all()
            or (remaining[positions] != wanted).any()):
        raise DataError(f"{where}: the {split} rows recorded in the run's splits.json do not "
                        f"fit the data's train split, which now has {len(remaining)} row(s) left "
                        f"to carve from; restore the data the run was trained on")
    return np.sort(positions)


def _carve(frames: dict[str, pd.DataFrame], fractions: Sequence[tuple[str, float]], seed: int,
           recorded: Mapping[str, Sequence[int]], where: str) -> dict[str, list[int]]:
    """Carve each missing split from train (in `frames`): `recorded` rows where given, else
    a `seed`ed draw. Returns each carved split's rows as positions in the original train."""
    rng = np.random.default_rng(seed)
    total = len(frames["train"])  # both fractions are shares of the original train split
    remaining = np.arange(total)  # original positions of the rows still in train
    carved: dict[str, list[int]] = {}
    for split, fraction in fractions:
        if split in frames:
            continue
        train = frames["train"]
        if split in recorded:
            take = _replayed_rows(recorded[split], remaining, split, where)
        else:
            n = max(1, round(total * fraction))
            if len(train) - n < 1:
                raise DataError(f"{where}: the training split has {len(train)} row(s), too few "
                                f"to carve a {split} split; provide one")
            take = np.sort(rng.permutation(len(train))[:n])
        keep = np.setdiff1d(np.arange(len(train)), take)
        if keep.size == 0:
            raise DataError(f"{where}: carving the recorded {split} rows leaves no training "
                            "rows; restore the data the run was trained on")
        frames[split] = train.iloc[take].reset_index(drop=True)
        frames["train"] = train.iloc[keep].reset_index(drop=True)
        carved[split] = remaining[take].tolist()
        remaining = remaining[keep]
    return carved


def _origin(data: Any, raw: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    """What the source was read from (see `polytask.tasks.fingerprint`)."""
    origin = data_fingerprint(data)
    if "hub" in origin:
        origin["datasets"] = {name: frame.attrs.get("datasets_fingerprint")
                              for name, frame in raw.items()}
    return origin


def load_source(name: str, data: Any, seed: int, validation_fraction: float,
                test_fraction: float, where: str,
                carved_rows: Mapping[str, Sequence[int]] | None = None) -> Source:
    """Load a table and make sure it has train, validation and test splits.

    Missing splits are carved from train with the split seed `seed`, or, for a split in
    `carved_rows` (a run's recorded carving), from exactly those rows of the original train
    split."""
    spec = data if isinstance(data, DataSpec) else None
    raw = read_spec(spec, where) if spec else _in_memory_splits(data, where)
    frames = {s: _apply_spec(f, spec, s, where)
              for s, f in _name_splits(raw, spec, where).items()}
    for split, frame in frames.items():
        if len(frame) == 0:
            fix = ("it needs rows to learn from" if split == "train" else
                   "give it rows, or leave it out to carve it from train")
            raise DataError(f"{where}: the {split} split is empty; {fix}")
    rows = _carve(frames, (("test", test_fraction), ("validation", validation_fraction)), seed,
                  carved_rows or {}, where)
    if spec is not None:  # after carving, so carved splits are limited too
        frames = {s: f.iloc[: spec.max_rows[s]].reset_index(drop=True)
                  if s in spec.max_rows else f for s, f in frames.items()}
    return Source(name, frames, list(rows), rows, _origin(data, raw))


def check_columns(task: Task, source: Source) -> None:
    """Every input and label column of `task` exists in every split of its source."""
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
    """One split of one source: encoded inputs and each reading task's labels, made
    contiguous once here (batches gather rows out of them at every step)."""

    inputs: Encoded
    labels: dict[str, Tensor]

    def __post_init__(self) -> None:
        self.inputs = {k: v.contiguous() for k, v in self.inputs.items()}
        self.labels = {k: v.contiguous() for k, v in self.labels.items()}

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
    #: Train-time augmentation of a batch (image inputs), applied by `BatchStream` only.
    batch_transform: BatchTransform | None = None

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
    share the same rows (and one backbone pass). A batch never holds more rows than its
    source's train split: a larger `batch_size` is capped there (see `cap_notes`).

    A batch is a pure function of its source's row offset (epoch x rows + position): its
    rows, and the random draws of the data's `batch_transform` (augmentation), seeded by
    (seed, source, offset). So with `num_workers` > 0, worker processes
    (`torch.utils.data.DataLoader`) build each source's next batches ahead of the step
    and a resumed run still gets exactly the batches it would have got.
    """

    def __init__(self, data: PreparedData, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0) -> None:
        self.data = data
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.num_workers = num_workers
        self._prefetched: dict[str, Iterator[tuple[int, Encoded, dict[str, Tensor]]]] = {}
        self.sources = sorted(data.splits)
        self.batch_sizes = {s: min(batch_size, data.splits[s]["train"].size)
                            for s in self.sources}
        self.position = {s: (0, 0) for s in self.sources}
        self._orders: dict[str, tuple[int, Tensor]] = {}

    def cap_notes(self) -> list[str]:
        """One line per source whose train split is smaller than `batch_size`."""
        readers = self.data.sources_of([t.name for t in self.data.tasks])
        notes = []
        for source, size in self.batch_sizes.items():
            if size < self.batch_size:
                names = readers.get(source, [source])
                what = f"task {names[0]}" if len(names) == 1 else f"tasks {', '.join(names)}"
                notes.append(f"train.batch_size {self.batch_size} is larger than the train split "
                             f"of {what} ({size} rows); using {size}")
        return notes

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

    def _offset(self, source: str) -> int:
        """Rows of the source drawn so far, over all epochs."""
        epoch, position = self.position[source]
        return epoch * self.data.splits[source]["train"].size + position

    def _advance(self, source: str) -> int:
        """Move the source past its next global batch; return that batch's offset."""
        offset, size = self._offset(source), self.data.splits[source]["train"].size
        end = offset + self.batch_sizes[source] * self.world_size
        self.position[source] = (end // size, end % size)
        return offset

    def _indices(self, source: str, offset: int) -> Tensor:
        """This rank's slice of the global batch (batch size x world_size rows) that starts
        `offset` rows into the source's stream of epochs."""
        batch_size = self.batch_sizes[source]
        size = self.data.splits[source]["train"].size
        epoch, position = divmod(offset, size)
        parts, needed = [], batch_size * self.world_size
        while needed:
            order = self._order(source, epoch)
            take = order[position : position + needed]
            parts.append(take)
            needed -= take.numel()
            position += take.numel()
            if position >= order.numel():
                epoch, position = epoch + 1, 0
        start = self.rank * batch_size
        rows = parts[0] if len(parts) == 1 else torch.cat(parts)
        return rows[start : start + batch_size]

    def source_batch(self, source: str, offset: int, tasks: Sequence[str],
                     ) -> tuple[Encoded, dict[str, Tensor]]:
        """The inputs and the labels of `tasks` of the source's batch at `offset`,
        augmented by the data's `batch_transform` (if any)."""
        split = self.data.splits[source]["train"]
        indices = self._indices(source, offset)
        inputs = collate(split.inputs, indices)
        labels = {name: split.labels[name].index_select(0, indices) for name in tasks}
        if self.data.batch_transform is not None:
            generator = torch.Generator().manual_seed(
                self.seed * 1_000_003 + self.sources.index(source) * 10_007 + offset * 7 + 1)
            inputs, labels = self.data.batch_transform(inputs, labels, generator)
        return inputs, {name: trim_labels(label, inputs) for name, label in labels.items()}

    def _prefetched_batch(self, source: str, offset: int) -> tuple[Encoded, dict[str, Tensor]]:
        """The batch at `offset`, built ahead by the source's worker processes."""
        if source not in self._prefetched:
            step = self.batch_sizes[source] * self.world_size
            readers = self.data.sources_of([t.name for t in self.data.tasks])[source]
            loader = DataLoader(_SourceBatches(self, source, readers), batch_size=None,
                                sampler=itertools.count(offset, step),
                                num_workers=self.num_workers)
            self._prefetched[source] = iter(loader)
        got, inputs, labels = next(self._prefetched[source])
        if got != offset:  # the stream moved without the workers: never expected
            raise RuntimeError(f"batch stream of {source!r}: workers built offset {got}, "
                               f"the step needs {offset}")
        return inputs, labels

    def next_batch(self, tasks: Sequence[str]) -> dict[str, tuple[Encoded, Tensor]]:
        """`{task: (inputs, labels)}` for the tasks of one step."""
        batch: dict[str, tuple[Encoded, Tensor]] = {}
        for source, names in self.data.sources_of(tasks).items():
            offset = self._advance(source)
            inputs, labels = (self._prefetched_batch(source, offset) if self.num_workers
                              else self.source_batch(source, offset, names))
            for name in names:
                batch[name] = (inputs, labels[name])
        return batch

    def close(self) -> None:
        """Stop the worker processes (they restart, where the stream is, when needed)."""
        self._prefetched.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"position": {s: list(p) for s, p in self.position.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.close()
        self.position = {s: (int(p[0]), int(p[1])) for s, p in state["position"].items()}


class _SourceBatches:
    """A map-style dataset for `DataLoader` workers: offset -> (offset, inputs, labels) of
    one source's batch at that offset, for all the tasks that read the source."""

    def __init__(self, stream: BatchStream, source: str, tasks: list[str]) -> None:
        self.stream, self.source, self.tasks = stream, source, tasks

    def __getitem__(self, offset: int) -> tuple[int, Encoded, dict[str, Tensor]]:
        return (offset, *self.stream.source_batch(self.source, offset, self.tasks))


def trim_labels(labels: Tensor, inputs: Encoded) -> Tensor:
    """Token labels follow the inputs' trimming to the batch's longest sequence (the last
    dimension of the token tensors)."""
    if labels.dtype == torch.long and labels.dim() == 2 and "input_ids" in inputs:
        return labels[:, : inputs["input_ids"].shape[-1]]
    return labels


def eval_batches(split: SplitData, tasks: Sequence[str], batch_size: int,
                 rows: range | None = None) -> Iterator[tuple[Encoded, dict[str, Tensor]]]:
    """Batches of a split (or of its `rows`), in order: yields (inputs, {task: labels})."""
    rows = rows if rows is not None else range(split.size)
    for start in range(rows.start, rows.stop, batch_size):
        indices = torch.arange(start, min(start + batch_size, rows.stop))
        inputs = collate(split.inputs, indices)
        yield inputs, {t: trim_labels(split.labels[t][indices], inputs) for t in tasks}
