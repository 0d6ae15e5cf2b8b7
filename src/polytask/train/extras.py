"""What a run reports beyond its tasks' test metrics: held-out tasks, extra splits, benchmarks.

- Cross-task generalisation (`split: {train_tasks, eval_tasks}`, Super-NaturalInstructions):
  the Trainer trains on `training_view` (the held-out tasks removed), then scores the
  held-out tasks zero-shot on their test split (`held_out` in results.json).
- Extra splits (`DataSpec.extra_splits`, e.g. MNLI's mismatched validation set) are scored
  like test (`extra_splits`).
- Benchmark averages declared in the task catalog (GLUE's score) over the run's catalog
  tasks (`benchmarks`), computed by `polytask.tasks.catalog.benchmark_scores`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from polytask.config import TaskSplit
from polytask.evaluate.evaluation import predict_split
from polytask.models.model import MultiTaskModel
from polytask.process import World
from polytask.tasks.catalog import benchmark_scores
from polytask.tasks.data import PreparedData
from polytask.tasks.spec import SPLITS

Metrics = dict[str, dict[str, float]]


def training_view(data: PreparedData, split: TaskSplit | None) -> PreparedData:
    """`data` without the tasks `split` holds out (and the sources only they read): what
    the Trainer samples, balances and validates on. `data` itself when nothing is held out."""
    if split is None:
        return data
    tasks = [t for t in data.tasks if t.name not in split.eval_tasks]
    task_source = {t.name: data.task_source[t.name] for t in tasks}
    sources = set(task_source.values())
    return dataclasses.replace(data, tasks=tasks, task_source=task_source,
                               splits={s: v for s, v in data.splits.items() if s in sources})


def evaluate_tasks(model: MultiTaskModel, data: PreparedData, split: str,
                   tasks: Sequence[str], batch_size: int, device: torch.device,
                   world: World | None = None) -> Metrics:
    """Every metric of `tasks` (not all of `data`'s) on `split`."""
    results = predict_split(model, data, split, batch_size, device, tasks=tasks, world=world)
    return {t: data.kinds[t].metrics(p, lab) for t, (p, lab) in results.items()}


def extra_split_metrics(model: MultiTaskModel, data: PreparedData, batch_size: int,
                        device: torch.device, world: World | None = None,
                        ) -> dict[str, Metrics]:
    """task -> extra split (any split beyond train/validation/test) -> metrics."""
    found: dict[str, Metrics] = {}
    for source, readers in data.sources_of([t.name for t in data.tasks]).items():
        for split in (s for s in data.splits[source] if s not in SPLITS):
            for task, metrics in evaluate_tasks(model, data, split, readers, batch_size,
                                                device, world).items():
                found.setdefault(task, {})[split] = metrics
    return found


def run_extras(model: MultiTaskModel, all_data: PreparedData, trained: PreparedData,
               split: TaskSplit | None, test: Metrics, batch_size: int, device: torch.device,
               world: World | None = None) -> dict[str, Any]:
    """The results.json sections beyond `tasks`: `extra_splits`, `benchmarks` and
    `held_out`, each only when the run has some."""
    extras: dict[str, Any] = {}
    extra = extra_split_metrics(model, trained, batch_size, device, world)
    if extra:
        extras["extra_splits"] = extra
    benchmarks = benchmark_scores(trained.tasks, test, extra)
    if benchmarks:
        extras["benchmarks"] = benchmarks
    if split is not None:
        extras["held_out"] = _held_out(model, all_data, split.eval_tasks, batch_size, device,
                                       world)
    return extras


def _held_out(model: MultiTaskModel, data: PreparedData, tasks: Sequence[str],
              batch_size: int, device: torch.device, world: World | None,
              ) -> dict[str, Any]:
    """Each held-out task's zero-shot test metrics, led by its primary metric."""
    metrics = evaluate_tasks(model, data, "test", tasks, batch_size, device, world)
    return {task: {"metric": data.kinds[task].metric,
                   "higher_is_better": data.kinds[task].higher_is_better,
                   "value": values[data.kinds[task].metric], "metrics": values}
            for task, values in metrics.items()}
