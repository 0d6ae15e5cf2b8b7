"""What a finished run leaves behind: results.json, the saved model and its metadata."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from polytask.config import RunConfig
from polytask.evaluate.delta import delta_m, relative_change
from polytask.files import atomic_write_text
from polytask.models.inputs import TabularInputs, TextInputs
from polytask.models.model import MultiTaskModel
from polytask.models.spec import BackboneSpec
from polytask.tasks.data import PreparedData
from polytask.train.checkpoint import save_weights


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically (temp file + rename; a full disk is a StorageError)."""
    atomic_write_text(path, json.dumps(value, indent=2))


def build_results(config: RunConfig, data: PreparedData, test: Mapping[str, Mapping[str, float]],
                  best: Mapping[str, Any], steps: int, baselines: Mapping[str, float | None],
                  stopped_early: bool, wall_time: float, step_time: float | None,
                  ) -> dict[str, Any]:
    """The results.json document (see the README for its fields)."""
    tasks: dict[str, Any] = {}
    for task in data.tasks:
        kind = data.kinds[task.name]
        value = test[task.name][kind.metric]
        baseline = baselines.get(task.name)
        tasks[task.name] = {
            "metric": kind.metric, "higher_is_better": kind.higher_is_better, "value": value,
            "baseline": baseline,
            "change_pct": None if baseline in (None, 0) else relative_change(
                value, baseline, kind.higher_is_better),
            "metrics": dict(test[task.name]),
        }
    have_all = all(t["baseline"] is not None for t in tasks.values())
    return {
        "tasks": tasks,
        "delta_m": delta_m({n: (t["value"], t["baseline"], t["higher_is_better"])
                            for n, t in tasks.items()}) if have_all else None,
        "delta_m_convention": "mean relative change vs single-task, %, positive = better "
                              "(papers such as Nash-MTL print the negation)",
        "seed": config.train.seed, "steps": steps, "stopped_early": stopped_early,
        "best_step": best.get("step"), "sampler": config.sampler.name,
        "balancer": config.balancer.name, "architecture": config.model.architecture.name,
        "validation": best.get("validation"), "wall_time_s": round(wall_time, 2),
        "median_step_time_s": step_time, "splits": _splits_summary(data.record),
    }


def _splits_summary(record: dict[str, Any]) -> dict[str, Any]:
    """splits.json without its per-row lists (the carved rows stay in splits.json only)."""
    return {"sources": {name: {k: v for k, v in source.items() if k != "carved_rows"}
                        for name, source in record.get("sources", {}).items()}}


def save_model(directory: Path, model: MultiTaskModel, data: PreparedData, spec: BackboneSpec,
               encoder: TextInputs | TabularInputs, config: RunConfig) -> None:
    """Final weights (safetensors) plus what `polytask predict` needs to rebuild the model."""
    save_weights(model.state_dict(), directory / "model.safetensors")
    meta = {
        "backbone": spec.model_dump(mode="json"),
        "inputs": encoder.state(),
        "tasks": [t.model_dump(mode="json", exclude={"data"}) for t in data.tasks],
        "kinds": {t.name: data.kinds[t.name].state() for t in data.tasks},
        "config": config.dump(),
    }
    write_json(directory / "meta.json", meta)
