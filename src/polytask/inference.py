"""Reload a finished run: re-evaluate it, or predict on new rows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

from polytask.config import ModelConfig, RunConfig
from polytask.errors import ConfigError, DataError
from polytask.evaluate.evaluation import evaluate
from polytask.models.backbones import build_tabular, build_text
from polytask.models.inputs import TabularInputs, TextInputs, collate
from polytask.models.model import MultiTaskModel
from polytask.models.spec import BackboneSpec
from polytask.pipeline import build_kinds, build_model, prepare
from polytask.tasks.kinds import TaskKind
from polytask.tasks.spec import Task
from polytask.train.checkpoint import load_weights_file


def _model_dir(run_dir: Path) -> Path:
    directory = run_dir / "model"
    if not (directory / "model.safetensors").exists():
        raise ConfigError(f"{run_dir} has no model/model.safetensors: is it a finished run?")
    return directory


def evaluate_run(run_dir: str | Path, split: str = "test") -> dict[str, dict[str, float]]:
    """Rebuild the run's data from its config.yaml and evaluate its final model."""
    run_dir = Path(run_dir)
    weights = load_weights_file(_model_dir(run_dir) / "model.safetensors")
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    if "<in-memory>" in json.dumps(raw):
        raise ConfigError(f"{run_dir} was trained on in-memory data that config.yaml cannot "
                          "hold; evaluate it from Python with polytask.evaluate")
    config = RunConfig.model_validate(raw)
    data, model, _, _ = prepare(config)
    model.load_state_dict(weights)
    return evaluate(model, data, split, config.train.eval_batch_size, torch.device("cpu"))


@dataclass
class LoadedRun:
    """A trained model with what it needs to encode inputs and decode predictions."""

    model: MultiTaskModel
    tasks: dict[str, Task]
    kinds: dict[str, TaskKind]
    encoder: TextInputs | TabularInputs

    def predict(self, task: str, frame: pd.DataFrame, batch_size: int = 64) -> list[Any]:
        """Decoded predictions of `task` for every row of `frame`."""
        if task not in self.tasks:
            raise ConfigError(f"--task: unknown task {task!r}; this run has {list(self.tasks)}")
        spec, kind = self.tasks[task], self.kinds[task]
        missing = [c for c in spec.input_columns if c not in frame.columns]
        if missing:
            raise DataError(f"--input: column(s) {missing} missing; the task reads "
                            f"{spec.input_columns}, the file has {list(frame.columns)}")
        words = kind.level == "token"
        encoded = self.encoder.encode(frame, spec.input_columns, words=words)
        self.model.eval()
        out: list[Any] = []
        with torch.no_grad():
            for start in range(0, len(frame), batch_size):
                rows = torch.arange(start, min(start + batch_size, len(frame)))
                batch = collate(encoded, rows)
                predictions = kind.predict(self.model({task: batch})[task])
                if words:
                    first = batch["word_index"] >= 0
                    out += [kind.decode(p[m].unsqueeze(0))[0]
                            for p, m in zip(predictions, first, strict=True)]
                else:
                    out += kind.decode(predictions)
        return out


def load_run(run_dir: str | Path) -> LoadedRun:
    """Load a run's final model from `run_dir/model` (no training data needed)."""
    directory = _model_dir(Path(run_dir))
    meta = json.loads((directory / "meta.json").read_text())
    tasks = [Task.model_validate(t) for t in meta["tasks"]]
    kinds = build_kinds(tasks)
    for name, state in meta["kinds"].items():
        kinds[name].load_state(state)
    spec = BackboneSpec.model_validate(meta["backbone"])
    encoder: TextInputs | TabularInputs
    if spec.type == "hf":
        backbone, encoder = build_text(spec)
    else:
        encoder = TabularInputs()
        encoder.load_state(meta["inputs"])
        backbone = build_tabular(spec, encoder)
    settings = ModelConfig.model_validate(meta["config"]["model"])
    model = build_model(settings, tasks, kinds, backbone)
    model.load_state_dict(load_weights_file(directory / "model.safetensors"))
    return LoadedRun(model, {t.name: t for t in tasks}, kinds, encoder)
