"""Bad input through the real CLI: every mistake is one clear message and exit code 2.

A corpus of bad configs and bad data, hand-written and generated with hypothesis, each run
through `polytask train CONFIG --run-dir DIR`. Every case must

- exit with code 2 through a `PolytaskError` (no exception escapes the command),
- print no traceback, and name the field / column / value that is wrong,
- write no results into a fresh run directory, and
- leave a run directory that already holds a finished run byte-for-byte unchanged.

The data is a small table (numeric and categorical inputs, one label column per task) and
the backbone a one-layer MLP, so each case takes milliseconds; the few cases that must train
use `max_steps: 2`.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from polytask.cli import app
from polytask.errors import ConfigError, DataError
from polytask.tasks.data import check_token_lengths, load_source
from polytask.tasks.kinds import IGNORE, TASK_KINDS
from polytask.tasks.spec import DataSpec, Task

runner = CliRunner()
INPUTS = ["x1", "x2", "colour"]
SPLITS = ("train", "validation", "test")
Frames = dict[str, pd.DataFrame]

# Cells that CSV readers turn into a missing value (or a non-string), so a "label not in
# the label list" made of them would be read as an unlabelled row instead.
_NULL_LIKE = {"na", "nan", "null", "none", "n", "y", "yes", "no", "true", "false", "on", "off",
              "inf", "infinity"}

FAST = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


# ------------------------------------------------------------------------------ the data


def table(n: int = 48, seed: int = 0) -> pd.DataFrame:
    """Numeric and categorical inputs; a label column for each task kind."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    frame = pd.DataFrame({"x1": x1, "x2": x2, "colour": rng.choice(["red", "green", "blue"], n)})
    frame["cls"] = np.where(x1 > 0, "yes", "no")
    frame["reg"] = 2 * x1 + x2
    frame["ml"] = ["|".join(f for f, on in (("p", a > 0), ("q", b > 0)) if on) or "r"
                   for a, b in zip(x1, x2, strict=True)]
    frame["p"], frame["q"] = (x1 > 0).astype(int), (x2 > 0).astype(int)
    return frame


def split_frames(frame: pd.DataFrame | None = None) -> Frames:
    frame = table() if frame is None else frame
    return {"train": frame.iloc[:32].reset_index(drop=True),
            "validation": frame.iloc[32:40].reset_index(drop=True),
            "test": frame.iloc[40:].reset_index(drop=True)}


def base_config() -> dict[str, Any]:
    return {
        "tasks": [
            {"name": "c", "kind": "classification", "input": INPUTS, "label": "cls",
             "labels": ["no", "yes"]},
            {"name": "r", "kind": "regression", "input": INPUTS, "label": "reg"},
            {"name": "m", "kind": "multilabel", "input": INPUTS, "label": "ml"},
        ],
        "model": {"backbone": {"type": "mlp", "hidden": [8]}},
        "baselines": "none",
        "train": {"max_steps": 2, "batch_size": 8, "eval_every": 2, "progress": False,
                  "callbacks": []},
    }


def write_case(folder: Path, config: dict[str, Any], frames: Frames | None = None,
               raw: dict[str, str] | None = None) -> Path:
    """Write the splits as CSV files (or `raw` text for a split) and point `data` at them,
    unless the config already says where its data is."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = split_frames() if frames is None else frames
    files = {}
    for split, frame in frames.items():
        path = folder / f"{split}.csv"
        if raw and split in raw:
            path.write_text(raw[split])
        else:
            frame.to_csv(path, index=False)
        files[split] = str(path)
    config = copy.deepcopy(config)
    config.setdefault("data", {"files": files})
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path


def train(config: Path, run_dir: Path, *extra: str) -> Any:
    return runner.invoke(app, ["train", str(config), "--run-dir", str(run_dir), *extra])


def flat(text: str) -> str:
    return " ".join(text.split())


def assert_clean_failure(result: Any, *fragments: str) -> str:
    """Exit code 2 from a reported error: no escaped exception, no traceback; every
    fragment in the message."""
    assert isinstance(result.exception, SystemExit), (
        f"an exception escaped the CLI: {result.exception!r}\n{result.output}")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    printed = flat(result.output)
    assert "error:" in printed
    for fragment in fragments:
        assert flat(fragment) in printed, f"{fragment!r} not in: {printed}"
    return printed


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module", autouse=True)
def _datasets_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """File loading goes through `datasets`; keep its Arrow cache out of the home folder."""
    import datasets

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE",
                      tmp_path_factory.mktemp("hf-cache"))
        patch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
        yield


class Finished:
    """A run directory holding a finished run, and the bytes of every file in it."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.files = snapshot(run_dir)

    def __repr__(self) -> str:
        return f"Finished({self.run_dir})"

    def assert_unchanged(self) -> None:
        assert (self.run_dir / "results.json").exists()
        assert snapshot(self.run_dir) == self.files, "a failed command changed a finished run"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Finished:
    folder = tmp_path_factory.mktemp("finished")
    config = write_case(folder / "case", base_config())
    result = train(config, folder / "run")
    assert result.exit_code == 0, result.output
    assert (folder / "run" / "results.json").exists()
    return Finished(folder / "run")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cases")


def check_case(folder: Path, config: dict[str, Any], frames: Frames | None,
               fragments: tuple[str, ...], finished: Finished,
               raw: dict[str, str] | None = None, extra: tuple[str, ...] = ()) -> str:
    """Run one bad input into a fresh run dir and into a finished one."""
    path = write_case(folder, config, frames, raw)
    fresh = folder / "run"
    printed = assert_clean_failure(train(path, fresh, *extra), *fragments)
    assert not (fresh / "results.json").exists()
    assert not (fresh / "model").exists()
    assert_clean_failure(train(path, finished.run_dir, *extra))
    finished.assert_unchanged()
    return printed


# ---------------------------------------------------------------- the hand-written corpus


def setp(dotted: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A config mutation: set `a.b.0.c` to `value` (creating mappings on the way)."""
    def mutate(config: dict[str, Any]) -> None:
        node: Any = config
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if isinstance(node, list):
            node[int(parts[-1])] = value
        else:
            node[parts[-1]] = value
    return mutate


def set_inputs(columns: list[str]) -> Callable[[dict[str, Any]], None]:
    """A config mutation: every task reads `columns` (tabular tasks share their inputs)."""
    def mutate(config: dict[str, Any]) -> None:
        for task in config["tasks"]:
            task["input"] = columns
    return mutate


def put(split: str, column: str, rows: list[int], value: Any) -> Callable[[Frames], None]:
    """A data mutation: set `column` of some rows of one split."""
    def mutate(frames: Frames) -> None:
        frame = frames[split]
        frame[column] = frame[column].astype(object)
        for row in rows:
            frame.loc[row, column] = value
    return mutate


def drop_column(split: str, column: str) -> Callable[[Frames], None]:
    def mutate(frames: Frames) -> None:
        frames[split] = frames[split].drop(columns=[column])
    return mutate


def header_only(split: str) -> Callable[[Frames], None]:
    def mutate(frames: Frames) -> None:
        frames[split] = frames[split].iloc[:0]
    return mutate


def column_of(column: str, value: Any, split: str = "train") -> Callable[[Frames], None]:
    def mutate(frames: Frames) -> None:
        frames[split][column] = value
    return mutate


def carve_everything(config: dict[str, Any]) -> None:
    """One file, with validation and test fractions that leave train nothing."""
    config["data"] = {"path": config["data"]["files"]["train"]}
    config["train"].update(validation_fraction=0.6, test_fraction=0.6)


@dataclass(frozen=True)
class Case:
    id: str
    config: Callable[[dict[str, Any]], None] | None = None
    data: Callable[[Frames], None] | None = None
    expect: tuple[str, ...] = ()
    raw: tuple[tuple[str, str], ...] = ()
    extra: tuple[str, ...] = ()


ML_COLUMNS = {"name": "m", "kind": "multilabel", "input": INPUTS, "label": ["p", "q"]}

CORPUS = [
    # -- files and splits
    Case("missing data file", setp("data", {"path": "/nonexistent/rows.csv"}),
         expect=("data.path", "'/nonexistent/rows.csv'", "neither a local file nor a folder")),
    Case("missing split file", setp("data", {"files": {"train": "/nonexistent/train.csv"}}),
         expect=("data.files.train", "'/nonexistent/train.csv'", "does not exist")),
    Case("unsupported file type", setp("data", {"path": __file__}),
         expect=("data:", "use .csv, .tsv, .json, .jsonl or .parquet")),
    Case("header-only validation file", data=header_only("validation"),
         expect=("data.files.validation", "has no rows")),
    Case("header-only train file", data=header_only("train"),
         expect=("data.files.train", "has no rows")),
    Case("zero-byte test file", raw=(("test", ""),),
         expect=("data.files.test", "is empty")),
    Case("binary garbage file", raw=(("train", "\x00\x01\x02\xff\xfe"),),
         expect=("data.files.train", "cannot read")),
    Case("no train split", setp("data.split_names", {"train": "training"}),
         expect=("data.split_names.train", "'training'")),
    Case("split mapped twice", setp("data.split_names", {"validation": "train"}),
         expect=("data: split_names:", "validation and train", "'train'")),
    Case("data as a bare string", setp("data", "rows.csv"),
         expect=("data:", "{path: rows.csv}")),
    Case("data as a number", setp("data", 5), expect=("data:", "int")),
    Case("misspelt data key beside a list", setp("data.pathh", ["a", "b"]),
         expect=("data.pathh: unknown key", "Did you mean 'path'")),
    Case("max_rows zero", setp("data.max_rows", {"train": 0}),
         expect=("data.max_rows", "at least 1 row", "0")),
    Case("max_rows negative", setp("data.max_rows", {"train": -5}),
         expect=("data.max_rows", "-5")),
    Case("max_rows unknown split", setp("data.max_rows", {"trian": 5}),
         expect=("data.max_rows", "'trian'")),
    Case("constant column given a list", setp("data.constant", {"lang": ["en", "fr"]}),
         expect=("data.constant", "lang", "one value")),
    Case("rename a missing column", setp("data.rename", {"x9": "x1"}),
         expect=("data.rename", "'x9'", "train split")),
    Case("rename onto an existing column", setp("data.rename", {"x2": "x1"}),
         expect=("data.rename", "'x2'", "'x1'", "two columns")),
    Case("fractions leave no train rows", lambda c: carve_everything(c),
         expect=("data:", "too few to carve")),
    # -- columns
    Case("input column missing", set_inputs(["x1", "x3", "colour"]),
         expect=("tasks.c.input", "'x3'", "train split")),
    Case("label column misspelt", setp("tasks.1.label", "regg"),
         expect=("tasks.r.label", "'regg'", "Did you mean 'reg'")),
    Case("label column missing in test", data=drop_column("test", "cls"),
         expect=("tasks.c.label", "'cls'", "test split")),
    Case("input column missing in validation", data=drop_column("validation", "x2"),
         expect=("tasks.c.input", "'x2'", "validation split")),
    Case("tasks on one table with different inputs", setp("tasks.1.input", ["x1", "x2"]),
         expect=("tasks.r.input", "share inputs")),
    # -- labels
    Case("label not in the label list", setp("tasks.0.labels", ["yes", "maybe"]),
         expect=("tasks.c", "label 'no'", "not in the label list", "['yes', 'maybe']")),
    Case("label in validation unseen in train",
         lambda c: c["tasks"][0].pop("labels"), put("validation", "cls", [3], "maybe"),
         expect=("tasks.c", "label 'maybe'", "validation split")),
    Case("label_map to an unknown label", setp("tasks.0.label_map", {"yes": "si"}),
         expect=("tasks.c", "'yes'", "['no', 'yes']")),
    Case("single label", setp("tasks.0.labels", ["yes"]),
         expect=("tasks.c", "at least 2 labels")),
    Case("empty label list", setp("tasks.0.labels", []),
         expect=("tasks.0.labels", "empty")),
    Case("repeated label", setp("tasks.0.labels", ["no", "yes", "no"]),
         expect=("tasks.0.labels", "['no']", "more than once")),
    Case("only one class in train", lambda c: c["tasks"][0].pop("labels"),
         column_of("cls", "yes"), expect=("tasks.c", "at least 2 labels", "['yes']")),
    Case("no labelled row although labels are listed", data=column_of("cls", np.nan),
         expect=("tasks.c", "no labelled row", "['cls']")),
    Case("multilabel without a labelled row", data=column_of("ml", np.nan),
         expect=("tasks.m", "no labelled row", "['ml']")),
    Case("regression labels all missing in train", data=column_of("reg", np.nan),
         expect=("tasks.r", "no labelled row", "['reg']")),
    Case("regression on strings", data=put("train", "reg", [2], "high"),
         expect=("tasks.r", "['reg']", "train split", "non-numeric", "'high'")),
    Case("regression on a text column", setp("tasks.1.label", "colour"),
         expect=("tasks.r", "['colour']", "non-numeric", "classification")),
    Case("regression label infinite", data=put("validation", "reg", [1], np.inf),
         expect=("tasks.r", "['reg']", "validation split", "infinite")),
    Case("classification on a continuous column", setp("tasks.0", {
        "name": "c", "kind": "classification", "input": INPUTS, "label": "x1"}),
         expect=("tasks.c", "not in the label list", "kind: regression", "more")),
    Case("multilabel on a numeric column", setp("tasks.2.label", "x1"),
         expect=("tasks.m.label", "'x1'", "train split", "list of labels")),
    Case("multilabel 0/1 columns holding text", setp("tasks.2", {**ML_COLUMNS,
                                                                 "label": ["p", "colour"]}),
         expect=("tasks.m.label", "'colour'", "0/1")),
    Case("multilabel 0/1 columns holding other numbers", setp("tasks.2", {**ML_COLUMNS,
                                                                          "label": ["p", "x2"]}),
         expect=("tasks.m.label", "'x2'", "0/1")),
    Case("multilabel names for the wrong number of columns",
         setp("tasks.2", {**ML_COLUMNS, "labels": ["a", "b", "c"]}),
         expect=("tasks.2", "3 name(s)", "2 0/1 label columns")),
    Case("metric of another kind", setp("tasks.1.metric", "accuracy"),
         expect=("tasks.r.metric", "'accuracy'", "mae")),
    Case("token task on a tabular backbone", setp("tasks.0", {
        "name": "c", "kind": "token_classification", "input": INPUTS, "label": "cls"}),
         expect=("tasks.c", "'token_classification'", "needs a text backbone")),
    # -- features
    Case("NaN in a numeric feature (train)", data=put("train", "x1", [1, 5], np.nan),
         expect=("train split", "['x1']", "NaN")),
    Case("NaN in a numeric feature (test)", data=put("test", "x2", [0], np.nan),
         expect=("test split", "['x2']", "NaN")),
    Case("text in a numeric feature", data=put("validation", "x2", [4], "abc"),
         expect=("validation split", "'x2'", "'abc'", "not a number")),
    Case("infinite feature", data=put("train", "x2", [3], np.inf),
         expect=("train split", "['x2']", "infinite")),
    # -- task definitions
    Case("unknown task kind", setp("tasks.0.kind", "clasification"),
         expect=("tasks.0.kind", "'clasification'", "Did you mean 'classification'")),
    Case("repeated task name", setp("tasks.1.name", "c"),
         expect=("tasks", "['c']", "unique")),
    Case("no tasks", setp("tasks", []), expect=("declare `tasks`",)),
    Case("tasks not a list", setp("tasks", "c"), expect=("tasks:", "valid list", "'c'")),
    Case("task not a mapping", setp("tasks", [1]), expect=("tasks.0",)),
    Case("task without fields", setp("tasks", [{}]),
         expect=("tasks.0.name", "tasks.0.kind", "tasks.0.input", "tasks.0.label")),
    Case("empty input list", setp("tasks.0.input", []),
         expect=("tasks.0.input", "at least one column")),
    Case("empty label list for regression", setp("tasks.1.label", []),
         expect=("tasks.1.label", "at least one column")),
    Case("repeated input column", setp("tasks.0.input", ["x1", "x1"]),
         expect=("tasks.0.input", "['x1']", "more than once")),
    Case("input of the wrong type", setp("tasks.0.input", 5), expect=("tasks.0.input", "5")),
    Case("misspelt task key", setp("tasks.0.lable", "cls"),
         expect=("tasks.0.lable: unknown key", "Did you mean 'label'")),
    Case("only an unknown task", setp("only", ["zz"]), expect=("only", "['zz']")),
    # -- methods and training settings
    Case("negative learning rate", setp("train.lr", -0.1),
         expect=("train.lr", "greater than 0", "-0.1")),
    Case("infinite learning rate", setp("train.lr", float("inf")),
         expect=("train.lr", "finite")),
    Case("learning rate as text", setp("train.lr", "fast"),
         expect=("train.lr", "'fast'")),
    Case("zero steps", setp("train.max_steps", 0), expect=("train.max_steps", "0")),
    Case("fractional steps", setp("train.max_steps", 2.5), expect=("train.max_steps", "2.5")),
    Case("steps as text", setp("train.max_steps", "ten"), expect=("train.max_steps", "'ten'")),
    Case("batch size as a list", setp("train.batch_size", [8]), expect=("train.batch_size",)),
    Case("negative seed", setp("train.seed", -1), expect=("train.seed", "-1")),
    Case("huge seed", setp("train.seed", 2**70), expect=("train.seed",)),
    Case("warmup ratio above 1", setp("train.warmup_ratio", 1.5),
         expect=("train.warmup_ratio", "1.5")),
    Case("unknown scheduler", setp("train.scheduler", "cosin"),
         expect=("train.scheduler", "'cosin'")),
    Case("not a device", setp("train.device", "tpu"), expect=("train.device", "'tpu'")),
    Case("misspelt train key", setp("train.max_stpes", 5),
         expect=("train.max_stpes: unknown key", "Did you mean 'max_steps'")),
    Case("unknown balancer", setp("balancer", "nash"),
         expect=("balancer.name", "'nash'", "Did you mean 'nash_mtl'")),
    Case("unknown sampler", setp("sampler", "propotional"),
         expect=("sampler.name", "'propotional'", "Did you mean 'proportional'")),
    Case("unknown architecture", setp("model.architecture", "mmoee"),
         expect=("model.architecture.name", "'mmoee'", "Did you mean 'mmoe'")),
    Case("balancer that needs every task with a one-task sampler",
         lambda c: c.update(balancer="pcgrad", sampler="round_robin"),
         expect=("'pcgrad'", "'round_robin'")),
    Case("unknown balancer hyperparameter", setp("balancer", {"name": "ew", "alpha": 1}),
         expect=("balancer", "'ew'", "alpha")),
    Case("sampler hyperparameter of the wrong type",
         setp("sampler", {"name": "temperature", "temperature": "hot"}),
         expect=("sampler", "'temperature'")),
    Case("architecture hyperparameter of the wrong type",
         setp("model.architecture", {"name": "hard_sharing", "layers": "two"}),
         expect=("model.architecture",)),
    Case("no backbone", setp("model", {}), expect=("model.backbone", "required")),
    Case("unknown backbone type", setp("model.backbone.type", "cnn"),
         expect=("model.backbone.type", "'cnn'")),
    Case("zero-width hidden layer", setp("model.backbone.hidden", [0]),
         expect=("model.backbone.hidden.0", "0")),
    Case("negative hidden layer", setp("model.backbone.hidden", [-8]),
         expect=("model.backbone.hidden.0", "-8")),
    Case("hidden layers as text", setp("model.backbone.hidden", "8"),
         expect=("model.backbone.hidden", "'8'")),
    Case("hf backbone without a name", setp("model.backbone", {"type": "hf"}),
         expect=("model.backbone.name", "required")),
    Case("unknown baselines mode", setp("baselines", "yes"), expect=("baselines", "'yes'")),
    Case("misspelt top-level key", setp("balncer", "ew"),
         expect=("balncer: unknown key", "Did you mean 'balancer'")),
    # -- the command line itself
    Case("--set without a value", extra=("--set", "train.lr"),
         expect=("--set 'train.lr'", "KEY=VALUE")),
    Case("--set a misspelt key", extra=("--set", "train.lrr=0.1"),
         expect=("train.lrr: unknown key", "Did you mean 'lr'")),
    Case("--set invalid YAML", extra=("--set", "train.lr=[1"), expect=("--set", "not valid YAML")),
]


@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_hand_written_corpus(case: Case, workspace: Path,
                             finished_run: Finished) -> None:
    config, frames = base_config(), split_frames()
    if case.data is not None:
        case.data(frames)
    folder = Path(tempfile.mkdtemp(dir=workspace))
    if case.config is not None:
        # mutations that read the data section see where the case's files will be
        config["data"] = {"files": {s: str(folder / f"{s}.csv") for s in SPLITS}}
        case.config(config)
    check_case(folder, config, frames, case.expect, finished_run, raw=dict(case.raw),
               extra=case.extra)


def test_corpus_ids_are_unique() -> None:
    assert len({c.id for c in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("text, fragment", [
    ("tasks: [\n", "not valid YAML"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("just text\n", "top level must be a mapping"),
    ("", "declare `tasks`"),
    ("train: {lr: 0.1}\ntrain: {lr: 0.2}\n", "duplicate key 'train'"),
    ("train: {lr: 0.1, lr: 0.2}\n", "duplicate key 'lr'"),
])
def test_config_files_that_are_not_configs(text: str, fragment: str, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert_clean_failure(train(path, tmp_path / "run"), fragment)
    assert not (tmp_path / "run").exists()


def test_missing_config_file(tmp_path: Path) -> None:
    assert_clean_failure(train(tmp_path / "nope.yaml", tmp_path / "run"), "nope.yaml",
                         "does not exist")


def test_finished_run_is_never_overwritten(tmp_path: Path,
                                           finished_run: Finished) -> None:
    """A good config aimed at a finished run is refused too, also with --set changes."""
    path = write_case(tmp_path, base_config())
    for extra in ((), ("--set", "train.max_steps=3"), ("--set", "balancer=uw")):
        assert_clean_failure(train(path, finished_run.run_dir, *extra), "already holds a run",
                             "nothing was overwritten")
        finished_run.assert_unchanged()


# ------------------------------------------------------------ generated corpora (hypothesis)

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
words = st.text(alphabet=_LETTERS, min_size=1, max_size=10).filter(
    lambda w: w.lower() not in _NULL_LIKE)

#: field -> values of a wrong type or out of range (each must be refused by the schema)
_POSITIVE_INT = st.one_of(st.integers(max_value=0), words,
                          st.floats(allow_nan=False, allow_infinity=False).filter(
                              lambda f: not f.is_integer()),
                          st.lists(st.integers(), min_size=1, max_size=3))
_POSITIVE_FLOAT = st.one_of(st.floats(max_value=0, allow_nan=False), words.filter(
    lambda w: w.lower() not in {"e"}), st.just(float("inf")),
    st.lists(st.floats(allow_nan=False), min_size=1, max_size=2))
_FRACTION = st.one_of(st.floats(min_value=1.0001, allow_nan=False, allow_infinity=False),
                      st.floats(max_value=-0.0001, allow_nan=False, allow_infinity=False),
                      words)
_BOOL = st.one_of(st.integers(min_value=2), words.filter(
    lambda w: w.lower() not in {"t", "f", "y", "n", "yes", "no", "true", "false", "on", "off"}),
    st.lists(st.booleans(), min_size=1, max_size=2))
_TEXT_FIELD = st.one_of(st.integers(), st.floats(allow_nan=False),
                        st.lists(st.integers(), min_size=1, max_size=2))

WRONG_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "train.max_steps": _POSITIVE_INT,
    "train.batch_size": _POSITIVE_INT,
    "train.eval_every": _POSITIVE_INT,
    "train.grad_accum": _POSITIVE_INT,
    "train.keep_checkpoints": _POSITIVE_INT,
    "train.lr": _POSITIVE_FLOAT,
    "train.grad_clip": _POSITIVE_FLOAT,
    "train.warmup_ratio": _FRACTION,
    "train.validation_fraction": _FRACTION,
    "train.progress": _BOOL,
    "train.scheduler": st.one_of(words.filter(lambda w: w not in {"linear", "cosine",
                                                                  "constant"}), _TEXT_FIELD),
    "train.nan_policy": words.filter(lambda w: w not in {"stop", "skip"}),
    "train.seed": st.one_of(st.integers(max_value=-1), st.integers(min_value=2**32), words),
    "model.head_hidden": _POSITIVE_INT,
    "model.auxiliary_loss_weight": st.one_of(
        st.floats(max_value=-0.001, allow_nan=False, allow_infinity=False), words),
    "model.backbone.hidden": st.one_of(words, st.lists(st.integers(max_value=0), min_size=1,
                                                       max_size=3)),
    "model.backbone.embedding_dim": _POSITIVE_INT,
    "model.backbone.dropout": _FRACTION,
    "tasks.0.name": _TEXT_FIELD,
    "tasks.0.labels": st.one_of(st.integers(), words),
    "tasks.1.label": st.one_of(st.integers(), st.just([])),
    "tasks.2.label_map": st.one_of(words, st.lists(words, min_size=1, max_size=2)),
    "baselines": words.filter(lambda w: w not in {"auto", "cached", "none"}),
    "only": st.one_of(words, st.integers()),
    "name": _TEXT_FIELD,
}


def _shown_value(value: Any) -> str | None:
    """The `(got VALUE)` the message shows for a scalar, as the config's YAML reads back."""
    if isinstance(value, bool | list | dict):
        return None
    return f"(got {value!r})" if isinstance(value, int | str) else None


@FAST
@given(field=st.sampled_from(sorted(WRONG_VALUES)), data=st.data())
def test_generated_wrong_typed_values(field: str, data: st.DataObject, workspace: Path,
                                      finished_run: Finished) -> None:
    value = data.draw(WRONG_VALUES[field], label="value")
    config = base_config()
    setp(field, value)(config)
    printed = check_case(Path(tempfile.mkdtemp(dir=workspace)), config, None, (),
                         finished_run)
    assert field in printed, printed
    shown = _shown_value(value)
    if shown is not None:
        assert shown in printed, printed


_SECTIONS = {"": "RunConfig", "train": "TrainConfig", "model": "ModelConfig",
             "model.backbone": "BackboneSpec", "data": "DataSpec", "tasks.0": "Task"}


def _valid_keys(section: str) -> set[str]:
    from polytask.config import ModelConfig, RunConfig, TrainConfig
    from polytask.models.spec import BackboneSpec

    models = {"RunConfig": RunConfig, "TrainConfig": TrainConfig, "ModelConfig": ModelConfig,
              "BackboneSpec": BackboneSpec, "DataSpec": DataSpec, "Task": Task}
    return set(models[_SECTIONS[section]].model_fields)


garbage_keys = st.text(alphabet=_LETTERS + "_", min_size=1, max_size=12).filter(
    lambda k: k.lower() not in _NULL_LIKE)


@FAST
@given(section=st.sampled_from(sorted(_SECTIONS)), key=garbage_keys,
       value=st.one_of(st.integers(), words, st.lists(st.integers(), max_size=2)))
def test_generated_garbage_keys(section: str, key: str, value: Any, workspace: Path,
                                finished_run: Finished) -> None:
    assume(key not in _valid_keys(section))
    folder = Path(tempfile.mkdtemp(dir=workspace))
    config = base_config()
    config["data"] = {"files": {s: str(folder / f"{s}.csv") for s in SPLITS}}
    setp(f"{section}.{key}" if section else key, value)(config)
    field = f"{section}.{key}" if section else key
    check_case(folder, config, None, (f"{field}: unknown key",), finished_run)


@FAST
@given(key=garbage_keys, value=st.integers())
def test_generated_garbage_method_hyperparameters(key: str, value: int, workspace: Path,
                                                  finished_run: Finished,
                                                  ) -> None:
    """Method sections take hyperparameters, so an unknown one is caught when the method is
    built: still before any training, naming the section and the key."""
    from polytask.balance import OPTION_NAMES

    assume(key != "name" and key not in OPTION_NAMES)
    config = base_config()
    config["balancer"] = {"name": "ew", key: value}
    check_case(Path(tempfile.mkdtemp(dir=workspace)), config, None,
               ("balancer", "'ew'", key), finished_run)


@FAST
@given(split=st.sampled_from(SPLITS), label=words.filter(lambda w: w not in {"no", "yes"}),
       rows=st.lists(st.integers(0, 7), min_size=1, max_size=3, unique=True))
def test_generated_labels_not_in_the_label_list(
        split: str, label: str, rows: list[int], workspace: Path,
        finished_run: Finished) -> None:
    frames = split_frames()
    put(split, "cls", rows, label)(frames)
    check_case(Path(tempfile.mkdtemp(dir=workspace)), base_config(), frames,
               ("tasks.c", f"label {label!r}", f"{split} split", "['no', 'yes']"),
               finished_run)


@FAST
@given(split=st.sampled_from(SPLITS), column=st.sampled_from(["x1", "x2"]),
       value=st.sampled_from([np.nan, np.inf, -np.inf, None]),
       rows=st.lists(st.integers(0, 7), min_size=1, max_size=4, unique=True))
def test_generated_bad_numeric_features(split: str, column: str, value: Any, rows: list[int],
                                        workspace: Path,
                                        finished_run: Finished) -> None:
    frames = split_frames()
    frames[split].loc[rows, column] = np.nan if value is None else value
    kind = "infinite" if value is not None and np.isinf(value) else "NaN"
    check_case(Path(tempfile.mkdtemp(dir=workspace)), base_config(), frames,
               (f"{split} split", f"[{column!r}]", kind), finished_run)


@FAST
@given(split=st.sampled_from(SPLITS), how=st.sampled_from(["header", "zero-byte", "unlabelled"]))
def test_generated_empty_splits(split: str, how: str, workspace: Path,
                                finished_run: Finished) -> None:
    frames, raw = split_frames(), {}
    if how == "header":
        header_only(split)(frames)
        expect: tuple[str, ...] = (f"data.files.{split}", "has no rows")
    elif how == "zero-byte":
        raw[split] = ""
        expect = (f"data.files.{split}", "is empty")
    else:  # every row of the split lacks the regression label: train cannot fit it
        frames["train"]["reg"] = np.nan
        expect = ("tasks.r", "no labelled row")
    check_case(Path(tempfile.mkdtemp(dir=workspace)), base_config(), frames, expect,
               finished_run, raw=raw)


_ALL_METRICS = sorted({m for kind in TASK_KINDS.names() for m in TASK_KINDS.get(kind).metric_names})


@FAST
@given(data=st.data())
def test_generated_mismatched_kinds(data: st.DataObject, workspace: Path,
                                    finished_run: Finished) -> None:
    """A metric of another kind, or a label column whose values the kind cannot read."""
    config = base_config()
    choice = data.draw(st.sampled_from(["metric", "column"]), label="mismatch")
    if choice == "metric":
        index = data.draw(st.integers(0, 2), label="task")
        task = config["tasks"][index]
        own = TASK_KINDS.get(task["kind"]).metric_names
        metric = data.draw(st.sampled_from([m for m in _ALL_METRICS if m not in own]))
        task["metric"] = metric
        expect: tuple[str, ...] = (f"tasks.{task['name']}.metric", repr(metric))
    else:
        kind, label, expect = data.draw(st.sampled_from([
            ("regression", "cls", ("tasks.t", "non-numeric")),
            ("regression", "colour", ("tasks.t", "non-numeric")),
            ("regression", "ml", ("tasks.t", "non-numeric")),
            ("multilabel", "x1", ("tasks.t.label", "'x1'")),
            ("multilabel", "reg", ("tasks.t.label", "'reg'")),
            ("multilabel", ["p", "x2"], ("tasks.t.label", "'x2'", "0/1")),
            ("multilabel", ["q", "cls"], ("tasks.t.label", "'cls'", "0/1")),
            ("classification", "x2", ("tasks.t", "kind: regression")),
            ("classification", "reg", ("tasks.t", "kind: regression")),
            ("token_classification", "cls", ("tasks.t", "text backbone")),
        ]), label="kind and column")
        config["tasks"].append({"name": "t", "kind": kind, "input": INPUTS, "label": label})
    check_case(Path(tempfile.mkdtemp(dir=workspace)), config, None, expect, finished_run)


@FAST
@given(name=words, family=st.sampled_from(["balancer", "sampler", "model.architecture",
                                           "tasks.0.kind"]))
def test_generated_unknown_method_names(name: str, family: str, workspace: Path,
                                        finished_run: Finished) -> None:
    from polytask.balance import BALANCERS
    from polytask.models.sharing import ARCHITECTURES
    from polytask.tasks.sampling import SAMPLERS

    registry = {"balancer": BALANCERS, "sampler": SAMPLERS, "model.architecture": ARCHITECTURES,
                "tasks.0.kind": TASK_KINDS}[family]
    assume(name not in registry)
    config = base_config()
    setp(family, name)(config)
    field = family if family == "tasks.0.kind" else f"{family}.name"
    check_case(Path(tempfile.mkdtemp(dir=workspace)), config, None,
               (field, repr(name), "Valid choices"), finished_run)


# ------------------------------------------------- gaps that used to fail or pass silently


def test_multilabel_columns_named_by_labels(tmp_path: Path) -> None:
    """One 0/1 column per label with `labels` naming them differently: column i is label i."""
    task = Task(name="m", kind="multilabel", input=INPUTS, label=["p", "q"],
                labels=["positive", "quick"])
    kind = TASK_KINDS.get("multilabel")(task)
    frame = pd.DataFrame({"p": [1, 0, 1, None], "q": [0, 0, 1, 1]})
    kind.fit(frame)
    assert kind.label_names == ["positive", "quick"]
    encoded = kind.encode(frame, "train")
    assert encoded[:3].tolist() == [[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]
    assert bool(encoded[3].isnan().all())  # a missing cell masks the row
    assert kind.decode(torch.tensor([[1, 1], [0, 1]])) == [["positive", "quick"], ["quick"]]
    booleans = pd.DataFrame({"p": [True, False], "q": ["true", "0"]})
    assert kind.encode(booleans, "test").tolist() == [[1.0, 1.0], [0.0, 0.0]]

    config = base_config()
    config["tasks"][2] = {**ML_COLUMNS, "labels": ["positive", "quick"]}
    path = write_case(tmp_path, config)
    result = train(path, tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "results.json").exists()


def test_missing_tag_inside_a_token_row_is_masked() -> None:
    task = Task(name="ner", kind="token_classification", input="tokens", label="tags")
    kind = TASK_KINDS.get("token_classification")(task)
    frame = pd.DataFrame({"tokens": [["Ada", "wrote"], ["in", "Rome"], ["x"]],
                          "tags": [["B-PER", None], ["O", "B-LOC"], None]})
    kind.fit(frame)
    assert kind.label_names == ["B-LOC", "B-PER", "O"]
    encoded = kind.encode(frame, "train")
    assert encoded.tolist() == [[1, IGNORE], [2, 0], [IGNORE, IGNORE]]
    nan_tag = pd.DataFrame({"tags": [["O", float("nan")]]})
    assert kind.encode(nan_tag, "validation").tolist() == [[2, IGNORE]]


def test_token_rows_must_be_lists_of_one_tag_per_word() -> None:
    task = Task(name="ner", kind="token_classification", input="tokens", label="tags")
    kind = TASK_KINDS.get("token_classification")(task)
    with pytest.raises(DataError, match=r"tasks\.ner\.label: row 0 of the train split"):
        kind.fit(pd.DataFrame({"tags": ["B-PER O"]}))
    frame = pd.DataFrame({"tokens": [["Ada", "wrote"], ["in"]], "tags": [["B-PER", "O"],
                                                                          ["O", "O"]]})
    with pytest.raises(DataError, match=r"row 1 of the test split has 1 word\(s\) but 2 tag"):
        check_token_lengths(task, frame, "test")
    check_token_lengths(task, frame.iloc[:1], "test")


def test_max_rows_limits_carved_splits_too(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    table(100).assign(id=range(100)).to_csv(path, index=False)
    full = load_source("shared", DataSpec(path=str(path)), 0, 0.2, 0.1, "data")
    limited = load_source("shared", DataSpec(path=str(path), max_rows={
        "train": 30, "validation": 5, "test": 3}), 0, 0.2, 0.1, "data")
    assert limited.carved == full.carved == ["test", "validation"]
    sizes = {s: len(f) for s, f in limited.frames.items()}
    assert sizes == {"train": 30, "validation": 5, "test": 3}
    for split, frame in limited.frames.items():  # the first rows of the same carving
        assert frame["id"].tolist() == full.frames[split]["id"].tolist()[: sizes[split]]


def test_errors_are_raised_as_polytask_errors() -> None:
    """The checks above are library errors too (not only CLI messages)."""
    from polytask.config import load_config

    with pytest.raises(ConfigError, match=r"train\.seed"):
        load_config({**base_config(), "data": {"path": "x.csv"}}, ["train.seed=-3"])
    with pytest.raises(ConfigError, match=r"data: give a mapping"):
        load_config({**base_config(), "data": "x.csv"})


# ---------------------------------------------------------- the CLI's own safety net


def test_unexpected_errors_are_one_line_with_a_debug_hint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from polytask.train import trainer

    def broken(self: Any) -> None:
        raise RuntimeError("something polytask did not check")

    monkeypatch.setattr(trainer.Trainer, "fit", broken)
    path = write_case(tmp_path, base_config())
    monkeypatch.delenv("POLYTASK_DEBUG", raising=False)
    result = train(path, tmp_path / "run")
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1
    printed = flat(result.output)
    assert "RuntimeError: something polytask did not check" in printed
    assert "POLYTASK_DEBUG=1" in printed and "Traceback" not in result.output
    monkeypatch.setenv("POLYTASK_DEBUG", "1")
    result = train(path, tmp_path / "run2")
    assert isinstance(result.exception, RuntimeError)  # the traceback is there to see


def test_messages_keep_their_square_brackets(tmp_path: Path) -> None:
    """rich would read `[col_a, col_b]` or `df[col]` as markup and drop it."""
    config = base_config()
    config["tasks"][2]["label"] = "x1"
    printed = assert_clean_failure(train(write_case(tmp_path, config), tmp_path / "run"))
    assert "`label: [col_a, col_b]`" in printed


def test_a_finished_run_dir_is_refused_before_baselines_are_trained(
        tmp_path: Path, finished_run: Finished) -> None:
    config = base_config()
    config.update(baselines="auto", baselines_dir=str(tmp_path / "baselines"))
    result = train(write_case(tmp_path, config), finished_run.run_dir)
    assert_clean_failure(result, "already holds a run")
    assert not (tmp_path / "baselines").exists()
    finished_run.assert_unchanged()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_device_without_cuda(tmp_path: Path) -> None:
    config = base_config()
    config["train"]["device"] = "cuda"
    assert_clean_failure(train(write_case(tmp_path, config), tmp_path / "run"),
                         "train.device", "'cuda'", "no CUDA device")


def test_unknown_callback(tmp_path: Path) -> None:
    config = base_config()
    config["train"]["callbacks"] = ["tensorbord"]
    assert_clean_failure(train(write_case(tmp_path, config), tmp_path / "run"),
                         "train.callbacks", "'tensorbord'", "Valid choices")


def test_run_dir_that_is_a_file(tmp_path: Path) -> None:
    taken = tmp_path / "run"
    taken.write_text("not a run")
    assert_clean_failure(train(write_case(tmp_path, base_config()), taken), "is a file")
    assert taken.read_text() == "not a run"
