"""Single-task baselines: each task trained alone with the run's settings, cached on disk.

A baseline is keyed by everything that defines single-task training of that task (its
spec and data, the backbone, the training settings and seed) but not by the multi-task
choices (sampler, balancer, architecture), so every multi-task run of the same tasks and
settings reuses it. It is trained with hard sharing, every-task sampling (of one task) and
equal weighting, i.e. plain single-task fine-tuning of backbone + head.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from polytask.config import MethodConfig, RunConfig
from polytask.models.inputs import content_hash
from polytask.pipeline import resolve
from polytask.tasks.spec import DataSpec
from polytask.train.checkpoint import list_checkpoints
from polytask.train.trainer import Trainer

#: Train settings that change what a run shows or where it logs, not what it learns.
_NOT_IN_KEY = {"progress", "callbacks", "threads"}


def _fingerprint(data: Any) -> Any:
    """A stable description of a task's data (file settings, or a hash of in-memory rows)."""
    if data is None or isinstance(data, DataSpec):
        return None if data is None else data.model_dump(mode="json")
    if isinstance(data, dict):
        return {str(k): _fingerprint(v) for k, v in data.items()}
    if isinstance(data, pd.DataFrame):
        return int(pd.util.hash_pandas_object(data, index=False).sum() % (2**61))
    if hasattr(data, "_fingerprint"):
        return data._fingerprint
    return repr(data)


def single_task_config(config: RunConfig, task: str) -> RunConfig:
    """The run config of `task`'s single-task baseline."""
    model = config.model.model_copy(update={"architecture": MethodConfig(name="hard_sharing")})
    return config.model_copy(update={
        "only": [task], "sampler": MethodConfig(name="all"), "balancer": MethodConfig(name="ew"),
        "model": model, "baselines": "none", "name": f"baseline-{task}",
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
    return Path(config.baselines_dir) / f"{task}-{key}"


def cached_baselines(config: RunConfig) -> dict[str, float | None]:
    """Each task's recorded single-task test value (None where not trained yet)."""
    values: dict[str, float | None] = {}
    for task in resolve(config).tasks:
        path = baseline_dir(config, task.name) / "results.json"
        values[task.name] = (json.loads(path.read_text())["tasks"][task.name]["value"]
                             if path.exists() else None)
    return values


def train_baselines(config: RunConfig, console: Console | None = None,
                    ) -> dict[str, float | None]:
    """Train every missing baseline (resuming an interrupted one) and return all values."""
    console = console or Console(stderr=True)
    for task, value in cached_baselines(config).items():
        if value is not None:
            console.print(f"baseline {task}: cached")
            continue
        directory = baseline_dir(config, task)
        console.print(f"baseline {task}: training alone -> {directory}")
        resume = bool(list_checkpoints(directory / "checkpoints"))
        if not resume and directory.exists():
            shutil.rmtree(directory)  # an attempt that crashed before its first checkpoint
        Trainer(single_task_config(config, task), directory, resume=resume,
                console=console).fit()
    return cached_baselines(config)
