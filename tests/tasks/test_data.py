"""Task data: loading tables and files, carving splits, column checks, resumable batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from polytask.errors import DataError
from polytask.tasks.data import (
    BatchStream,
    PreparedData,
    Source,
    SplitData,
    align_token_labels,
    check_columns,
    load_source,
)
from polytask.tasks.kinds import IGNORE
from polytask.tasks.spec import DataSpec, Task


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """File loading goes through `datasets`; keep its Arrow cache out of the home folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def table(n: int, start: int = 0) -> pd.DataFrame:
    ids = list(range(start, start + n))
    return pd.DataFrame({"id": ids, "text": [f"row {i}" for i in ids],
                         "label": ["even" if i % 2 == 0 else "odd" for i in ids]})


def load(data: Any, seed: int = 0, validation: float = 0.1, test: float = 0.1) -> Source:
    return load_source("shared", data, seed, validation, test, "data")


def ids(frame: pd.DataFrame) -> list[int]:
    return frame["id"].tolist()


# ------------------------------------------------------------------------ splits


def test_carves_validation_and_test_from_train() -> None:
    source = load(table(100), validation=0.2, test=0.1)
    assert source.name == "shared" and source.carved == ["test", "validation"]
    sizes = {split: len(frame) for split, frame in source.frames.items()}
    assert sizes == {"train": 70, "validation": 20, "test": 10}
    parts = [set(ids(source.frames[s])) for s in ("train", "validation", "test")]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    assert set().union(*parts) == set(range(100))
    for frame in source.frames.values():  # rows keep their order and a fresh index
        assert ids(frame) == sorted(ids(frame))
        assert frame.index.tolist() == list(range(len(frame)))


def test_carving_is_deterministic_for_a_seed() -> None:
    first, again, other = load(table(100), seed=5), load(table(100), seed=5), load(
        table(100), seed=6)
    for split in ("train", "validation", "test"):
        assert ids(first.frames[split]) == ids(again.frames[split])
    assert ids(first.frames["test"]) != ids(other.frames["test"])
    assert ids(first.frames["validation"]) != ids(other.frames["validation"])


def test_existing_splits_are_kept() -> None:
    validation = table(7, start=1000)
    source = load({"train": table(50), "validation": validation})
    assert source.carved == ["test"]
    assert ids(source.frames["validation"]) == ids(validation)
    assert len(source.frames["test"]) == 5 and len(source.frames["train"]) == 45
    assert set(ids(source.frames["test"])) <= set(range(50))
    complete = load({"train": table(4), "valid": table(2, 100), "test": table(2, 200)})
    assert complete.carved == [] and ids(complete.frames["validation"]) == [100, 101]


def test_dict_of_columns_is_one_table() -> None:
    source = load({"id": list(range(10)), "text": ["x"] * 10})
    assert sum(len(f) for f in source.frames.values()) == 10
    assert source.carved == ["test", "validation"]


def test_no_training_split() -> None:
    with pytest.raises(DataError) as info:
        load({"validation": table(5), "test": table(5)})
    message = str(info.value)
    assert "no training split" in message and "['test', 'validation']" in message
    assert "split_names" in message


def test_empty_split_raises() -> None:
    with pytest.raises(DataError, match="the validation split is empty"):
        load({"train": table(10), "validation": table(0)})


def test_too_few_rows_to_carve() -> None:
    with pytest.raises(DataError, match=r"1 row\(s\), too few to carve a test split"):
        load(table(1))
    with pytest.raises(DataError, match="too few to carve a validation split"):
        load(table(10), validation=0.5, test=0.6)


# ------------------------------------------------------------------------ files


def write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_file_formats_through_path(tmp_path: Path, suffix: str) -> None:
    path = write(table(20), tmp_path / f"rows{suffix}")
    source = load(DataSpec(path=str(path)), validation=0.25, test=0.25)
    assert source.carved == ["test", "validation"]
    rows = pd.concat(source.frames.values()).sort_values("id")
    assert ids(rows) == list(range(20))
    assert rows["text"].tolist() == table(20)["text"].tolist()
    assert rows["label"].tolist() == table(20)["label"].tolist()


def test_files_per_split_with_split_names(tmp_path: Path) -> None:
    files = {"train": str(write(table(12), tmp_path / "train.csv")),
             "dev": str(write(table(3, 100), tmp_path / "dev.jsonl")),
             "heldout": str(write(table(4, 200), tmp_path / "heldout.parquet"))}
    spec = DataSpec(files=files, split_names={"validation": "dev", "test": "heldout"})
    source = load(spec)
    assert source.carved == []
    assert ids(source.frames["train"]) == list(range(12))
    assert ids(source.frames["validation"]) == [100, 101, 102]
    assert ids(source.frames["test"]) == [200, 201, 202, 203]


def test_split_names_pointing_nowhere(tmp_path: Path) -> None:
    spec = DataSpec(files={"train": str(write(table(5), tmp_path / "a.csv"))},
                    split_names={"validation": "dev"})
    with pytest.raises(DataError) as info:
        load(spec)
    message = str(info.value)
    assert "data.split_names.validation" in message and "'dev'" in message
    assert "['train']" in message


def test_rename_constant_and_max_rows(tmp_path: Path) -> None:
    files = {"train": str(write(table(30), tmp_path / "train.csv")),
             "validation": str(write(table(10, 100), tmp_path / "valid.csv")),
             "test": str(write(table(10, 200), tmp_path / "test.csv"))}
    spec = DataSpec(files=files, rename={"text": "sentence"}, constant={"lang": "en"},
                    max_rows={"train": 8, "test": 3})
    source = load(spec)
    train = source.frames["train"]
    assert list(train.columns) == ["id", "sentence", "label", "lang"]
    assert ids(train) == list(range(8)) and set(train["lang"]) == {"en"}
    assert len(source.frames["validation"]) == 10 and len(source.frames["test"]) == 3


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.csv")
    with pytest.raises(DataError) as info:
        load(DataSpec(files={"train": missing}))
    assert "data.files.train" in str(info.value) and repr(missing) in str(info.value)
    with pytest.raises(DataError) as info:
        load(DataSpec(path=missing))
    message = str(info.value)
    assert "data.path" in message and repr(missing) in message and "hub: true" in message


def test_unsupported_file_type(tmp_path: Path) -> None:
    path = tmp_path / "rows.txt"
    path.write_text("a b c\n")
    with pytest.raises(DataError, match=r"\.csv, \.tsv, \.json, \.jsonl or \.parquet"):
        load(DataSpec(path=str(path)))


def test_spec_without_path_or_files() -> None:
    with pytest.raises(DataError, match="give `path`"):
        load(DataSpec())


# ------------------------------------------------------------------------ columns


def test_check_columns_names_column_split_and_nearest() -> None:
    source = load(table(20))
    check_columns(Task(name="parity", kind="classification", input="text", label="label"),
                  source)
    task = Task(name="parity", kind="classification", input="txt", label="label")
    with pytest.raises(DataError) as info:
        check_columns(task, source)
    message = str(info.value)
    assert "tasks.parity.input" in message and "'txt'" in message and "'shared'" in message
    assert "Did you mean 'text'?" in message and "split" in message
    task = Task(name="parity", kind="classification", input="text", label="labels")
    with pytest.raises(DataError, match=r"tasks\.parity\.label: column 'labels'.*'label'"):
        check_columns(task, source)


# ------------------------------------------------------------------------ batches


def split_data(n: int, tasks: list[str]) -> SplitData:
    rows = torch.arange(n)
    return SplitData(inputs={"x": rows.float().unsqueeze(1), "row": rows},
                     labels={t: rows * (k + 1) for k, t in enumerate(tasks)})


def prepared(sizes: dict[str, int], task_source: dict[str, str]) -> PreparedData:
    splits = {}
    for source, n in sizes.items():
        readers = [t for t, s in task_source.items() if s == source]
        splits[source] = {"train": split_data(n, readers), "validation": split_data(2, readers)}
    tasks = [Task(name=t, kind="regression", input="x", label="y") for t in task_source]
    return PreparedData(tasks=tasks, kinds={}, task_source=task_source, splits=splits,
                        record={})


def rows_of(batch: dict[str, tuple[dict[str, torch.Tensor], torch.Tensor]],
            task: str) -> list[int]:
    return batch[task][0]["row"].tolist()


def test_prepared_data_groups_and_sizes() -> None:
    data = prepared({"shared": 10, "own": 4}, {"a": "shared", "b": "own", "c": "shared"})
    assert data.sources_of(["a", "b", "c"]) == {"shared": ["a", "c"], "own": ["b"]}
    assert data.train_sizes() == {"a": 10, "b": 4, "c": 10}


def test_batches_have_batch_size_rows_and_matching_labels() -> None:
    data = prepared({"shared": 10}, {"a": "shared"})
    stream = BatchStream(data, batch_size=4, seed=0)
    for _ in range(5):
        inputs, labels = stream.next_batch(["a"])["a"]
        assert inputs["x"].shape == (4, 1) and labels.shape == (4,)
        assert torch.equal(labels, inputs["row"])


def test_each_epoch_is_a_permutation_and_reshuffled() -> None:
    n, batch_size = 6, 4
    stream = BatchStream(prepared({"shared": n}, {"a": "shared"}), batch_size, seed=3)
    seen = [r for _ in range(6) for r in rows_of(stream.next_batch(["a"]), "a")]
    epochs = [seen[i : i + n] for i in range(0, len(seen), n)]
    assert len(epochs) == 4
    assert all(sorted(epoch) == list(range(n)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) > 1  # reshuffled, not repeated


def test_tiny_source_cycles_without_crashing() -> None:
    stream = BatchStream(prepared({"tiny": 3}, {"a": "tiny"}), batch_size=8, seed=0)
    for _ in range(4):  # a batch is capped at the 3 rows of the split: one epoch each
        rows = rows_of(stream.next_batch(["a"]), "a")
        assert sorted(rows) == [0, 1, 2]
    assert stream.position["tiny"] == (4, 0)
    stream = BatchStream(prepared({"tiny": 3}, {"a": "tiny"}), batch_size=2, seed=0)
    for _ in range(4):  # a batch that does not divide the split runs on into the next epoch
        assert len(rows_of(stream.next_batch(["a"]), "a")) == 2
    assert stream.position["tiny"] == (2, 2)  # 8 rows = 2 epochs of 3 and 2 rows


def test_tasks_on_one_source_share_inputs() -> None:
    data = prepared({"shared": 10, "own": 5}, {"a": "shared", "b": "shared", "c": "own"})
    batch = BatchStream(data, batch_size=3, seed=0).next_batch(["a", "b", "c"])
    assert set(batch) == {"a", "b", "c"}
    assert batch["a"][0] is batch["b"][0]
    assert batch["c"][0] is not batch["a"][0]
    rows = batch["a"][0]["row"]
    assert torch.equal(batch["a"][1], rows) and torch.equal(batch["b"][1], rows * 2)


def test_sources_advance_independently() -> None:
    data = prepared({"shared": 10, "own": 5}, {"a": "shared", "c": "own"})
    stream = BatchStream(data, batch_size=2, seed=0)
    stream.next_batch(["a"])
    stream.next_batch(["a", "c"])
    assert stream.position == {"own": (0, 2), "shared": (0, 4)}


def test_state_dict_resumes_the_same_batches() -> None:
    data = prepared({"shared": 7, "own": 5}, {"a": "shared", "b": "shared", "c": "own"})
    steps = [["a", "b"], ["c"], ["a", "c"], ["b"], ["a", "b", "c"], ["c"]]
    stream = BatchStream(data, batch_size=3, seed=11)
    for tasks in steps:
        stream.next_batch(tasks)
    state = stream.state_dict()
    expected = [stream.next_batch(tasks) for tasks in steps]
    resumed = BatchStream(data, batch_size=3, seed=11)
    resumed.load_state_dict(state)
    for tasks, want in zip(steps, expected, strict=True):
        got = resumed.next_batch(tasks)
        assert {t: rows_of(got, t) for t in tasks} == {t: rows_of(want, t) for t in tasks}


def test_seed_changes_the_order() -> None:
    data = prepared({"shared": 20}, {"a": "shared"})
    first = rows_of(BatchStream(data, 20, seed=0).next_batch(["a"]), "a")
    again = rows_of(BatchStream(data, 20, seed=0).next_batch(["a"]), "a")
    other = rows_of(BatchStream(data, 20, seed=1).next_batch(["a"]), "a")
    assert first == again and first != other


# ------------------------------------------------------------------------ token labels


def test_align_token_labels_first_subword_only() -> None:
    # words: [w0 w1 w2] -> sub-words [CLS] w0 w1a w1b w2 [SEP] [PAD]
    word_labels = torch.tensor([[4, 5, 6], [7, IGNORE, IGNORE]])
    word_index = torch.tensor([[-1, 0, 1, -1, 2, -1, -1],
                               [-1, 0, -1, -1, -1, -1, -1]])
    aligned = align_token_labels(word_labels, word_index)
    assert aligned.tolist() == [
        [IGNORE, 4, 5, IGNORE, 6, IGNORE, IGNORE],
        [IGNORE, 7, IGNORE, IGNORE, IGNORE, IGNORE, IGNORE],
    ]
    assert aligned.dtype == torch.long
