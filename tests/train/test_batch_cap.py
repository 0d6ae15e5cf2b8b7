"""A batch size larger than a task's train split is capped at the split (with a warning)."""

from __future__ import annotations

import resource
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console

from polytask import Trainer, load_config
from polytask.tasks.data import BatchStream, PreparedData, SplitData
from polytask.tasks.spec import Task

HUGE = 1_000_000_000


def prepared(sizes: dict[str, int], task_source: dict[str, str]) -> PreparedData:
    splits = {}
    for source, n in sizes.items():
        rows = torch.arange(n)
        readers = [t for t, s in task_source.items() if s == source]
        split = SplitData(inputs={"row": rows}, labels={t: rows.float() for t in readers})
        splits[source] = {"train": split}
    tasks = [Task(name=t, kind="regression", input="x", label="y") for t in task_source]
    return PreparedData(tasks=tasks, kinds={}, task_source=task_source, splits=splits,
                        record={})


def test_batch_is_capped_per_source_and_each_cap_is_explained() -> None:
    data = prepared({"shared": 20, "big": 50}, {"a": "shared", "b": "shared", "c": "big"})
    stream = BatchStream(data, batch_size=30, seed=0)
    batch = stream.next_batch(["a", "c"])
    assert sorted(batch["a"][0]["row"].tolist()) == list(range(20))  # all rows, each once
    assert batch["c"][0]["row"].shape == (30,)  # the larger source keeps the batch size
    assert stream.cap_notes() == [
        "train.batch_size 30 is larger than the train split of tasks a, b (20 rows); using 20"]


def test_batch_cap_holds_under_several_ranks() -> None:
    data = prepared({"shared": 6}, {"a": "shared"})
    ranks = [BatchStream(data, batch_size=HUGE, seed=0, rank=r, world_size=2) for r in (0, 1)]
    for stream in ranks:
        assert stream.next_batch(["a"])["a"][0]["row"].shape == (6,)


def test_a_huge_batch_size_trains_on_a_tiny_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60)})
    frame["species"] = np.where(frame["a"] > 0, "adelie", "gentoo")
    config = load_config({
        "tasks": [{"name": "species", "kind": "classification", "input": ["a", "b"],
                   "label": "species", "data": frame}],
        "model": {"backbone": {"type": "mlp", "hidden": [8]}},
        "train": {"max_steps": 3, "batch_size": HUGE, "eval_batch_size": HUGE,
                  "eval_every": 3, "progress": False, "callbacks": []},
    })
    console = Console(record=True, width=300)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    trainer = Trainer(config, tmp_path / "run", console=console)
    results = trainer.fit()
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    rows = trainer.data.train_sizes()["species"]
    assert results["steps"] == 3
    assert (f"train.batch_size {HUGE} is larger than the train split of task species "
            f"({rows} rows); using {rows}") in console.export_text()
    assert grown_mib < 512, f"peak memory grew by {grown_mib:.0f} MiB"
