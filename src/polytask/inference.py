"""Reload a finished run: re-evaluate it, or predict on new rows."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from rich.console import Console
from rich.markup import escape
from torch import Tensor

from polytask.config import MethodConfig, ModelConfig, RunConfig
from polytask.errors import ConfigError, DataError
from polytask.evaluate.evaluation import evaluate
from polytask.files import read_yaml
from polytask.merge.merged_run import MERGE_KEY, restore_heads
from polytask.models.adapters import ADAPTERS
from polytask.models.adapters.base import apply_preference
from polytask.models.backbones import build_tabular, build_text
from polytask.models.generative import build_generative, decoding
from polytask.models.images import ImageInputs
from polytask.models.inputs import TabularInputs, TextInputs, collate
from polytask.models.model import MultiTaskModel
from polytask.models.spec import IMAGE_BACKBONES, BackboneSpec
from polytask.models.vision import build_vision
from polytask.pipeline import build_kinds, build_model, data_fingerprints, prepare
from polytask.tasks.data import PreparedData
from polytask.tasks.fingerprint import data_changes
from polytask.tasks.kinds import TaskKind
from polytask.tasks.spec import Task
from polytask.train.checkpoint import load_weights_file


def _model_dir(run_dir: Path) -> Path:
    directory = run_dir / "model"
    if not (directory / "model.safetensors").exists():
        raise ConfigError(f"{run_dir} has no model/model.safetensors: is it a finished run?")
    return directory


def _load_weights(model: MultiTaskModel, directory: Path, weights: dict[str, Tensor]) -> None:
    """Load a run's weights; a merged run (meta.json's `merge` record) first gets back the
    head structure it was saved with (`polytask.merge.merged_run.restore_heads`)."""
    meta = json.loads((directory / "meta.json").read_text())
    restore_heads(model, meta.get(MERGE_KEY, {}), weights)
    model.load_state_dict(weights)


def _recorded_sources(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The sources the run recorded in splits.json (empty for a run without one)."""
    path = run_dir / "splits.json"
    return json.loads(path.read_text()).get("sources", {}) if path.exists() else {}


def _check_data(run_dir: Path, changes: list[str], allow_data_change: bool,
                console: Console) -> None:
    """Refuse to evaluate on changed data, or (when allowed) say what changed."""
    if not changes:
        return
    listed = "\n  ".join(changes)
    if not allow_data_change:
        raise DataError(f"the data of {run_dir} changed since it was trained:\n  {listed}\n"
                        "Evaluating now would score other rows than the run's. Restore the "
                        "data, or pass --allow-data-change to evaluate anyway (carved splits "
                        "are rebuilt from the recorded rows).")
    console.print(escape(f"warning: evaluating {run_dir} on changed data "
                         f"(--allow-data-change):\n  {listed}"), style="yellow",
                  highlight=False, soft_wrap=True)


def _as_trained(settings: ModelConfig) -> ModelConfig:
    """The model settings that rebuild a trained model whose weights are loaded next: an
    adapter's options that only initialise it (a source run to start from) are dropped, so
    reloading never needs the source run (`Adapter.reload_options`)."""
    adapter = settings.adapter
    if adapter is None or adapter.name not in ADAPTERS:
        return settings
    options = ADAPTERS.get(adapter.name).reload_options(adapter.options)
    return settings.model_copy(update={"adapter": MethodConfig(name=adapter.name, **options)})


@dataclass
class PreparedRun:
    """A finished run's final model, with its data rebuilt from config.yaml."""

    model: MultiTaskModel
    data: PreparedData
    config: RunConfig

    def evaluate(self, split: str = "test") -> dict[str, dict[str, float]]:
        """Every metric of every task on `split` (validation or test)."""
        return evaluate(self.model, self.data, split, self.config.train.eval_batch_size,
                        torch.device("cpu"))


def evaluate_run(run_dir: str | Path, split: str = "test", allow_data_change: bool = False,
                 console: Console | None = None,
                 preference: Sequence[float] | None = None) -> dict[str, dict[str, float]]:
    """Rebuild the run's data from its config.yaml and evaluate its final model (see
    `prepare_run`). `preference`: for a palora run, the inference preference (one
    non-negative weight per task, in the run's task order)."""
    run = prepare_run(run_dir, allow_data_change, console)
    if preference is not None:
        apply_preference(run.model.adapter, preference)
    return run.evaluate(split)


def prepare_run(run_dir: str | Path, allow_data_change: bool = False,
                console: Console | None = None) -> PreparedRun:
    """Rebuild the run's data from its config.yaml and load its final model.

    The data must match the fingerprints (file hashes, row counts) the run recorded in
    splits.json, else a DataError lists the changes; `allow_data_change=True` goes on
    anyway and prints them on `console`. Carved splits are rebuilt from the recorded rows."""
    run_dir = Path(run_dir)
    console = console or Console(stderr=True)
    weights = load_weights_file(_model_dir(run_dir) / "model.safetensors")
    raw = read_yaml(run_dir / "config.yaml")
    if "<in-memory>" in json.dumps(raw):
        raise ConfigError(f"{run_dir} was trained on in-memory data that config.yaml cannot "
                          "hold; evaluate it from Python with polytask.evaluate")
    config = RunConfig.model_validate(raw)
    config = config.model_copy(update={"model": _as_trained(config.model)})
    recorded = _recorded_sources(run_dir)
    if recorded and all("carved_with_seed" in s for s in recorded.values()):  # older runs
        seed = next(iter(recorded.values()))["carved_with_seed"]
        config = config.model_copy(update={
            "train": config.train.model_copy(update={"split_seed": seed})})
    before = (data_changes(recorded, data_fingerprints(config)) if recorded else
              ["the run has no splits.json, so its data cannot be checked"])
    if not allow_data_change:
        _check_data(run_dir, before, allow_data_change, console)  # before any loading
    data, model, _, _ = prepare(config, {name: source.get("carved_rows", {})
                                         for name, source in recorded.items()})
    after = data_changes(recorded, data.record["sources"]) if recorded else []  # + rows
    _check_data(run_dir, before + [c for c in after if c not in before], allow_data_change,
                console)
    _load_weights(model, run_dir / "model", weights)
    return PreparedRun(model, data, config)


Rows = pd.DataFrame | Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]
#: The split name under which a kind that builds its own inputs keeps the rows to predict.
PREDICT_SPLIT = "predict"


def _as_frame(rows: Rows) -> pd.DataFrame:
    """A DataFrame from a DataFrame, a list of dict rows or a dict of columns."""
    if isinstance(rows, pd.DataFrame):
        return rows
    if isinstance(rows, Mapping):
        try:
            return pd.DataFrame(dict(rows))
        except ValueError as error:
            raise DataError(f"rows: a dict must map each column name to a list of values, one "
                            f"per row ({error}); or pass a list of dict rows") from None
    if isinstance(rows, Sequence) and all(isinstance(row, Mapping) for row in rows):
        return pd.DataFrame(list(rows))
    raise DataError(f"rows: got {type(rows).__name__}; pass a pandas DataFrame, a list of "
                    "dict rows ([{'text': ...}, ...]) or a dict of columns ({'text': [...]})")


@dataclass
class LoadedRun:
    """A trained model with what it needs to encode inputs and decode predictions."""

    model: MultiTaskModel
    tasks: dict[str, Task]
    kinds: dict[str, TaskKind]
    encoder: TextInputs | TabularInputs | ImageInputs

    def predict(self, rows: Rows, tasks: str | Sequence[str] | None = None,
                proba: bool = False, batch_size: int = 64) -> pd.DataFrame:
        """Predictions for every row: one column per task (`tasks`: a name, a list of names,
        or None / "all" for every task), indexed like the input rows. Values are decoded
        labels (a list of labels for multilabel, one tag per word for token tasks, a number
        for regression); with `proba=True`, `{label: probability}` instead (per word for
        token tasks; regression keeps its value)."""
        frame = _as_frame(rows)
        selected = self._select(tasks)
        groups: dict[tuple[tuple[str, ...], bool], list[str]] = {}
        columns: dict[str, list[Any]] = {}
        for task in selected:  # tasks reading the same columns share one encoding and pass
            if self.kinds[task].owns_inputs:
                columns[task] = self._predict_owned(task, frame, proba, batch_size)
                continue
            key = (tuple(self.tasks[task].input_columns), self.kinds[task].level == "token")
            groups.setdefault(key, []).append(task)
        for group in groups.values():
            columns.update(self._predict_tasks(group, frame, proba, batch_size))
        return pd.DataFrame({task: columns[task] for task in selected}, index=frame.index)

    def _select(self, tasks: str | Sequence[str] | None) -> list[str]:
        if tasks is None or tasks == "all":
            return list(self.tasks)
        names = [tasks] if isinstance(tasks, str) else list(tasks)
        unknown = [name for name in names if name not in self.tasks]
        if unknown or not names:
            problem = f"unknown task(s) {unknown}" if unknown else "no task named"
            raise ConfigError(f"tasks: {problem}; this run has {list(self.tasks)}: name some "
                              "of them, or all")
        return names

    def _check_inputs(self, task: str, frame: pd.DataFrame) -> list[str]:
        """The input columns of `task`, which the rows must have."""
        columns = self.tasks[task].input_columns
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise DataError(f"input rows: column(s) {missing} missing; task {task!r} reads "
                            f"{columns}, the rows have {list(frame.columns)}")
        return columns

    def _predict_owned(self, task: str, frame: pd.DataFrame, proba: bool,
                       batch_size: int) -> list[Any]:
        """Decoded predictions of a task whose kind builds its own inputs (answer windows,
        choice pairs): its input rows may outnumber the frame's, so they are decoded back
        to one prediction per frame row by the kind."""
        self._check_inputs(task, frame)
        if frame.empty:
            return []
        kind = self.kinds[task]
        encoded = kind.encode_inputs(frame, self.encoder, PREDICT_SPLIT)
        size = next(iter(encoded.values())).shape[0]
        self.model.eval()
        predictions = []
        with torch.no_grad(), decoding(self.model):  # generation tasks generate text
            for start in range(0, size, batch_size):
                batch = collate(encoded, torch.arange(start, min(start + batch_size, size)))
                predictions.append(kind.predict(self.model({task: batch}).outputs[task]))
        return kind.decode_encoded(torch.cat(predictions), PREDICT_SPLIT, proba)

    def _predict_tasks(self, tasks: list[str], frame: pd.DataFrame, proba: bool,
                       batch_size: int) -> dict[str, list[Any]]:
        """Decoded predictions (or probabilities) of `tasks`, which read the same input
        columns, for every row of `frame`: the rows are encoded once and each batch goes
        through the model once for all of them."""
        columns = self._check_inputs(tasks[0], frame)
        words = self.kinds[tasks[0]].level == "token"
        encoded = self.encoder.encode(frame, columns, words=words)
        self.model.eval()
        out: dict[str, list[Any]] = {task: [] for task in tasks}
        with torch.no_grad():
            for start in range(0, len(frame), batch_size):
                rows = torch.arange(start, min(start + batch_size, len(frame)))
                batch = collate(encoded, rows)
                outputs = self.model(dict.fromkeys(tasks, batch)).outputs
                for task in tasks:
                    kind = self.kinds[task]
                    if words:  # keep each word's first piece
                        first = batch["word_index"] >= 0
                        out[task] += [_decode(kind, row[keep].unsqueeze(0), proba)[0]
                                      for row, keep in zip(outputs[task], first, strict=True)]
                    else:
                        out[task] += _decode(kind, outputs[task], proba)
        return out


def _decode(kind: TaskKind, outputs: Tensor, proba: bool) -> list[Any]:
    return kind.probabilities(outputs) if proba else kind.decode(kind.predict(outputs))


def load(run_dir: str | Path) -> LoadedRun:
    """Load a run's final model from `run_dir/model` (no training data needed):
    `polytask.load("runs/census").predict(rows)`."""
    directory = _model_dir(Path(run_dir))
    meta = json.loads((directory / "meta.json").read_text())
    tasks = [Task.model_validate(t) for t in meta["tasks"]]
    kinds = build_kinds(tasks)
    for name, state in meta["kinds"].items():
        kinds[name].load_state(state)
    spec = BackboneSpec.model_validate(meta["backbone"])
    if spec.name and (directory / spec.name).is_dir():  # an export's own copy of the encoder
        spec = spec.model_copy(update={"name": str(directory / spec.name)})
    encoder: TextInputs | TabularInputs | ImageInputs
    generative = [name for name, kind in kinds.items() if kind.generative]
    if generative:
        backbone, encoder = build_generative(spec, generative)
    elif spec.type == "hf":
        backbone, encoder = build_text(spec)
    elif spec.type in IMAGE_BACKBONES:  # the run's weights replace any initial ones
        encoder = ImageInputs()
        encoder.load_state(meta["inputs"])
        backbone = build_vision(spec.model_copy(update={"pretrained": False,
                                                        "weights_path": None}), encoder)
    else:
        encoder = TabularInputs()
        encoder.load_state(meta["inputs"])
        backbone = build_tabular(spec, encoder)
    settings = _as_trained(ModelConfig.model_validate(meta["config"]["model"]))
    model = build_model(settings, tasks, kinds, backbone)
    _load_weights(model, directory, load_weights_file(directory / "model.safetensors"))
    return LoadedRun(model, {t.name: t for t in tasks}, kinds, encoder)


load_run = load  # the former name
