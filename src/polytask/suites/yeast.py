"""`yeast`: 14 binary gene-function tasks over 103 expression features (many-task, tabular).

The MULAN multi-label Yeast set (2,417 genes), read from the copy shipped in the river
package, treated as 14 binary classification tasks on one shared table.
"""

from __future__ import annotations

import pandas as pd

from polytask.errors import DataError
from polytask.models.spec import BackboneSpec
from polytask.suites._base import (
    SUITES,
    Splits,
    Suite,
    cached_tables,
    carve_splits,
    check_splits,
    package_file,
)
from polytask.tasks.spec import Task

PIP_RIVER = "pip install --no-deps river==0.26.1"
FILE = "datasets/yeast.csv.gz"
N_FEATURES = 103
N_TASKS = 14
FEATURES = [f"att{i}" for i in range(1, N_FEATURES + 1)]
TASKS = [f"class{i}" for i in range(1, N_TASKS + 1)]
BINARY_LABELS = ["0", "1"]


def _build(train_size: int | None, eval_size: int | None) -> dict[str, Splits]:
    """The shared splits (the uncached work)."""
    path = package_file("river", FILE, PIP_RIVER)
    raw = pd.read_csv(path)
    raw.columns = [column.lower() for column in raw.columns]
    missing = sorted(set(FEATURES + TASKS) - set(raw.columns))
    if missing:
        raise DataError(f"{path}: missing columns {missing[:5]}...; reinstall with: {PIP_RIVER}")
    targets = raw[TASKS].astype(int)
    if not targets.isin([0, 1]).all().all():
        raise DataError(f"{path}: label columns {TASKS[0]}..{TASKS[-1]} must be 0/1")
    # Label values as the names "0"/"1", matching Task.labels exactly.
    frame = pd.concat([raw[FEATURES].astype("float64"), targets.astype(str)], axis=1)
    return {"yeast": carve_splits(frame, train_size=train_size, eval_size=eval_size)}


@SUITES.register(
    "yeast",
    paper="Elisseeff & Weston 2001, A kernel method for multi-labelled classification (Yeast)",
)
def load_yeast(*, train_size: int | None = None, eval_size: int | None = 400) -> Suite:
    """Yeast: 14 binary gene-function tasks sharing 103 numeric features.

    Args:
        train_size: training rows (None: all 1,617 left after evaluation rows by default).
        eval_size: rows in each of validation and test.
    """
    options = {"train_size": train_size, "eval_size": eval_size}
    path = package_file("river", FILE, PIP_RIVER)
    data = cached_tables("yeast", _build, options, [path])["yeast"]
    check_splits(data, "yeast suite")
    # Primary metric macro_f1, not accuracy: positive rates run from 1.4% (class14) to 75%
    # (class12), so a constant prediction already scores 0.75-0.99 accuracy on most tasks,
    # while its macro F1 stays near 0.4-0.5; macro F1 only rises when both classes are found.
    tasks = [
        Task(name=task, kind="classification", input=FEATURES, label=task,
             labels=BINARY_LABELS, metric="macro_f1")
        for task in TASKS
    ]
    return Suite(
        name="yeast",
        description=(
            "Yeast gene functions (MULAN multi-label set, 2,417 genes): 14 binary tasks on "
            "103 shared numeric features; positive rates range from 1.4% to 75%, so the "
            "primary metric is macro F1. A many-task stress test for balancers."
        ),
        tasks=tasks,
        data=data,
        backbone=BackboneSpec(type="mlp", hidden=[128]),
        recommended={"max_steps": 1000, "batch_size": 64, "lr": 1e-3, "eval_every": 200},
    )
