"""Single-task baselines: each task trained alone with the run's settings, cached on disk.

A baseline is keyed by everything that defines single-task training of that task (its
spec, the content of its data, the backbone, the training settings, seed and split seed) but
not by the multi-task choices (sampler, balancer, architecture), so every multi-task run of
the same tasks, data and settings reuses it, and an edited data file gets a new baseline.
It is trained with hard sharing, every-task sampling (of one task) and equal weighting, i.e.
plain single-task fine-tuning of backbone + head. `polytask.train.trainer.train_baselines`
trains the missing ones (this module knows their keys and cache, not the Trainer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from polytask.config import MethodConfig, RunConfig
from polytask.files import inside
from polytask.models.inputs import content_hash
from polytask.pipeline import resolve
from polytask.tasks.fingerprint import data_fingerprint
from polytask.tasks.spec import DataSpec

#: Train settings that change what a run shows or where it logs, not what it learns.
_NOT_IN_KEY = {"progress", "callbacks", "threads"}


def _fingerprint(data: Any) -> Any:
    """What identifies a task's data in the baseline key: its content (file hashes, hub id +
    subset + revision, or a hash of in-memory rows) and the settings applied to it (rename,
    max_rows, ...), but not where its files lie, so an edited file gets a new baseline."""
    if data is None:
        return None
    settings = (data.model_dump(mode="json", exclude={"path", "files"})
                if isinstance(data, DataSpec) else None)
    return [settings, data_fingerprint(data)["fingerprint"]]


def single_task_config(config: RunConfig, task: str) -> RunConfig:
    """The run config of `task`'s single-task baseline."""
    model = config.model.model_copy(update={"architecture": MethodConfig(name="hard_sharing")})
    return config.model_copy(update={
        "only": [task], "sampler": MethodConfig(name="all"), "balancer": MethodConfig(name="ew"),
        "model": model, "baselines": "none", "name": f"baseline-{task}", "split": None,
    })


def baseline_dir(config: RunConfig, task: str) -> Path:
    resolved = resolve(config)
    spec = next(t for t in resolved.tasks if t.name == task)
    key = content_hash(
        spec.model_dump(mode="json", exclude={"data"}), _fingerprint(spec.data),
        _fingerprint(resolved.shared_data) if spec.data is None else None,
        resolved.backbone.model_dump(mode="json"),
        config.train.model_dump(mode="json", exclude=_NOT_IN_KEY),
        config.model.head_hidden, config.suite.model_dump(mode="json") if config.suite else None,
    )
    return inside(config.baselines_dir, f"{task}-{key}")


def cached_baselines(config: RunConfig) -> dict[str, float | None]:
    """Each task's recorded single-task test value (None where not trained yet). Tasks held
    out by `split.eval_tasks` have none: they are scored zero-shot, not against a baseline."""
    values: dict[str, float | None] = {}
    held_out = config.split.eval_tasks if config.split else []
    for task in (t for t in resolve(config).tasks if t.name not in held_out):
        path = baseline_dir(config, task.name) / "results.json"
        values[task.name] = (json.loads(path.read_text())["tasks"][task.name]["value"]
                             if path.exists() else None)
    return values

