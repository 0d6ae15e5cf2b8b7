"""TaskWeb pairwise transfer, and TaskShop's estimate through intermediate tasks.

Kim, Asai, Ilharco and Hajishirzi, "TaskWeb: Selecting Better Source Tasks for Multi-task
NLP", EMNLP 2023 (arXiv 2305.13256).

Pairwise transfer (TaskWeb §3): for every ordered pair of tasks (s, t),

    A[s][t] = relative change (%) of t's primary metric on validation after training s→t,
              against t trained alone with the same recipe and steps,

with the sign flipped for metrics where lower is better (so positive means s helps t; the
convention of `polytask.evaluate.delta.relative_change`). `mode: sequential` (TaskWeb's
setting) trains s alone, then starts t's run from s's backbone weights (t's head fresh, the
same head t's alone run starts from); `mode: joint` trains s and t together in one run, which
gives both A[s][t] and A[t][s]. Every run uses the single-task recipe of
`polytask.train.baselines` (hard sharing, equal weighting, every task each step) for
`steps` optimizer steps, and is read at its best validation checkpoint (test is never read).
The paper averages over seeds and mixes in the share of seeds with positive transfer; one
measurement here is one seed (the config's).

Cost: T alone runs + T(T-1) target runs (sequential; the source runs are the alone runs) or
T(T-1)/2 pair runs (joint). Each run is cached under ``work_dir/taskweb/`` in a folder keyed
by a hash of what defines it (the single-task baseline key of each task involved, the mode),
so a finished run is reused and an interrupted one resumes from its last checkpoint.

TaskShop (TaskWeb §5) scores a source s for a target t through pivot tasks p:
see `taskshop_scores`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rich.console import Console

from polytask.affinity.base import AFFINITY, AffinityMatrix, AffinityMethod
from polytask.config import RunConfig
from polytask.errors import CheckpointError, ConfigError, TrainingError
from polytask.evaluate.delta import relative_change
from polytask.files import inside
from polytask.models.inputs import content_hash
from polytask.models.model import MultiTaskModel
from polytask.pipeline import prepare, resolve
from polytask.train.baselines import baseline_dir, single_task_config
from polytask.train.callbacks import Callback
from polytask.train.checkpoint import load_weights_file
from polytask.train.trainer import Trainer

#: TaskShop's λ, the weight of the pivot paths against the direct score (the paper's 0.7,
#: chosen there by holding out PIQA as a validation target).
TASKSHOP_PIVOT_WEIGHT = 0.7


def taskshop_scores(matrix: AffinityMatrix, target: str,
                    pivot_weight: float = TASKSHOP_PIVOT_WEIGHT) -> list[tuple[str, float]]:
    """TaskShop's estimate of each other task's value as a source for `target`, best first.

    TaskWeb §5 (and the authors' ``taskshop_predict.py``) scores source s for target t as

        score(s→t) = λ · mean_p [ (A[s][p] + A[p][t]) / 2 ] + (1 − λ) · A[s][t]

    over the pivot tasks p ∉ {s, t}: a source that helps tasks which in turn help the target
    is likely to help the target too (transitivity of positive transfer). In the paper t is a
    new task, so A[p][t] and A[s][t] are estimates from a task-similarity method; here t is
    one of the matrix's tasks, so they are measured entries. λ = `pivot_weight` (0.7).
    Pivots whose entries are NaN are left out; with no usable pivot the score is the direct
    A[s][t], and with A[s][t] NaN it is the pivot mean alone (still NaN when neither exists).
    NaN scores come last.

    Raises:
        ConfigError: `target` is not one of the matrix's tasks.
    """
    if target not in matrix.tasks:
        raise ConfigError(f"--target {target!r} is not a task of the {matrix.method} affinity "
                          f"matrix; choose one of: {', '.join(matrix.tasks)}")
    values = matrix.array()
    t = matrix.tasks.index(target)
    scores = []
    for s, source in enumerate(matrix.tasks):
        if s == t:
            continue
        paths = [(values[s, p] + values[p, t]) / 2 for p in range(len(matrix.tasks))
                 if p not in (s, t) and math.isfinite(values[s, p] + values[p, t])]
        scores.append((source, _blend(paths, float(values[s, t]), pivot_weight)))
    return sorted(scores, key=lambda pair: (math.isnan(pair[1]), -np.nan_to_num(pair[1])))


def _blend(paths: list[float], direct: float, pivot_weight: float) -> float:
    """λ · mean(paths) + (1 − λ) · direct, falling back to whichever part exists."""
    if not paths:
        return direct
    pivot = float(np.mean(paths))
    return pivot if math.isnan(direct) else pivot_weight * pivot + (1 - pivot_weight) * direct


def validation_value(results: dict[str, Any], task: str) -> tuple[float, bool]:
    """`task`'s primary metric at the run's best validation checkpoint (from results.json),
    and whether higher is better."""
    entry = results["tasks"][task]
    validation = results.get("validation") or {}
    if task not in validation:
        raise TrainingError(f"taskweb: the run has no validation metrics for task {task!r}; "
                            "it never evaluated (check train.eval_every and steps)")
    return float(validation[task][entry["metric"]]), bool(entry["higher_is_better"])


def transfer_change(results: dict[str, Any], alone: dict[str, Any], target: str) -> float:
    """Relative change (%) of `target`'s validation metric in `results` against its run
    `alone`; positive = better, whichever the metric's direction. NaN when undefined (an
    alone value of 0, e.g. an MCC of 0 after a short run)."""
    value, higher_is_better = validation_value(results, target)
    baseline, _ = validation_value(alone, target)
    try:
        return relative_change(value, baseline, higher_is_better)
    except ValueError:
        return math.nan


def start_from_source(config: RunConfig, source_run: Path) -> MultiTaskModel:
    """The model `config` builds (fresh heads, exactly those its alone run starts from),
    with the backbone weights of the finished run in `source_run` (its model/ folder)."""
    path = source_run / "model" / "model.safetensors"
    weights = load_weights_file(path)
    _, model, _, _ = prepare(config)
    backbone = {k.removeprefix("backbone."): v for k, v in weights.items()
                if k.startswith("backbone.")}
    try:
        model.backbone.load_state_dict(backbone)
    except RuntimeError as error:
        raise CheckpointError(
            f"taskweb (sequential): the backbone saved in {path} does not fit the target's "
            f"backbone ({error}); sequential transfer needs tasks that read the same inputs. "
            "Use mode: joint, or measure these tasks separately.") from None
    return model


class CachedRuns:
    """Trains or reuses the runs cached under one folder, counting which (`trained`,
    `reused`); `label` prefixes its progress lines."""

    def __init__(self, folder: Path, console: Console, label: str) -> None:
        self.folder = folder
        self.console = console
        self.label = label
        self.trained = 0
        self.reused = 0

    def fit(self, config: RunConfig, name: str,
            model: Callable[[], MultiTaskModel] | None = None,
            callbacks: Sequence[Callback] = (),
            bind: Callable[[Trainer], None] | None = None) -> tuple[dict[str, Any], Path]:
        """The results of the run `name` (a folder under `folder`): read when finished,
        else trained (resumed from its last checkpoint when interrupted). `model`: returns
        the model to start from (called only when training). `callbacks` go to the Trainer,
        which `bind` (if given) receives before it trains."""
        directory = inside(self.folder, name)
        if (directory / "results.json").exists():
            self.reused += 1
            return json.loads((directory / "results.json").read_text()), directory
        self.trained += 1
        self.console.print(f"{self.label}: training {name} ({config.train.max_steps} steps)",
                           highlight=False)
        # the folder is keyed by what defines the run, so the config is not compared
        trainer = Trainer(config, directory, resume=directory.exists(), console=self.console,
                          compare_config=False, model=model() if model else None,
                          callbacks=callbacks)
        if bind is not None:
            bind(trainer)
        return trainer.fit(), directory


def quiet_recipe(config: RunConfig, steps: int | None) -> RunConfig:
    """The config an affinity method's runs derive from: `steps` optimizer steps (default:
    the config's), no progress bar and no callbacks (neither is part of a run's cache key)."""
    train = config.train.model_copy(update={
        "max_steps": steps or config.train.max_steps, "progress": False, "callbacks": []})
    return config.model_copy(update={"train": train})


@AFFINITY.register(
    "taskweb", paper="TaskWeb: Selecting Better Source Tasks for Multi-task NLP (Kim et al., "
    "EMNLP 2023)")
class TaskWeb(AffinityMethod):
    """Pairwise transfer: the relative change of a target's validation metric when trained
    after (or with) a source, against the target alone; TaskShop ranks sources through
    pivot tasks.

    Options: `mode` sequential (train on the source, then continue on the target from its
    backbone; TaskWeb's setting) or joint (the pair trained together); `steps` per run
    (default: the config's train.max_steps).
    """

    def __init__(self, mode: Literal["sequential", "joint"] = "sequential",
                 steps: int | None = None) -> None:
        if mode not in ("sequential", "joint"):
            raise ValueError(f"taskweb: mode {mode!r} is not sequential or joint")
        if steps is not None and steps < 1:
            raise ValueError(f"taskweb: steps must be a positive number of steps, got {steps}")
        self.mode = mode
        self.steps = steps

    def measure(self, config: RunConfig, work_dir: Path, console: Console) -> AffinityMatrix:
        started = time.perf_counter()
        recipe = quiet_recipe(config, self.steps)
        tasks = [t.name for t in resolve(recipe).tasks]
        if len(tasks) < 2:
            raise ConfigError(f"taskweb: needs at least two tasks, the config has {tasks}")
        runs = CachedRuns(Path(work_dir) / "taskweb", console, "taskweb")
        keys = {t: baseline_dir(recipe, t).name for t in tasks}  # `<task>-<hash>`
        alone = {t: runs.fit(single_task_config(recipe, t), keys[t]) for t in tasks}
        values = [[math.nan] * len(tasks) for _ in tasks]
        pairs = (self._sequential(recipe, tasks, keys, alone, runs) if self.mode == "sequential"
                 else self._joint(recipe, tasks, keys, runs))
        trained = runs.trained
        for (source, target), results in pairs:
            change = transfer_change(results, alone[target][0], target)
            values[tasks.index(source)][tasks.index(target)] = change
            shown = (f"{change:+.2f}%" if math.isfinite(change)
                     else f"undefined ({target} alone scores 0)")
            console.print(f"taskweb {source} -> {target} ({self.mode}, "
                          f"{'trained' if runs.trained > trained else 'cached'}): "
                          f"{shown} on {target}'s validation metric", highlight=False)
            trained = runs.trained
        return AffinityMatrix(
            method="taskweb", tasks=tasks, values=values,
            definition=("A[s][t] = 100 · (M_t(s→t) − M_t(t alone)) / |M_t(t alone)|, t's "
                        "primary validation metric (sign flipped when lower is better), "
                        f"{self.mode} training, {recipe.train.max_steps} steps per run"),
            seconds=time.perf_counter() - started,
            details={"mode": self.mode, "steps": recipe.train.max_steps,
                     "runs_trained": runs.trained, "runs_reused": runs.reused,
                     "alone_validation": {t: validation_value(alone[t][0], t)[0]
                                          for t in tasks},
                     "runs_dir": str(runs.folder)},
        )

    @staticmethod
    def _sequential(recipe: RunConfig, tasks: list[str], keys: dict[str, str],
                    alone: dict[str, tuple[dict[str, Any], Path]], runs: CachedRuns,
                    ) -> Iterator[tuple[tuple[str, str], dict[str, Any]]]:
        """Each target trained from each source's alone run (its backbone), pair by pair."""
        for source in tasks:
            for target in tasks:
                if source == target:
                    continue
                config = single_task_config(recipe, target).model_copy(
                    update={"name": f"taskweb-{source}-then-{target}"})
                key = content_hash("sequential", keys[source], keys[target])
                results, _ = runs.fit(config, f"{source}-then-{target}-{key}",
                                      model=lambda c=config, s=source:
                                      start_from_source(c, alone[s][1]))
                yield (source, target), results

    @staticmethod
    def _joint(recipe: RunConfig, tasks: list[str], keys: dict[str, str], runs: CachedRuns,
               ) -> Iterator[tuple[tuple[str, str], dict[str, Any]]]:
        """Each unordered pair trained together once; the run serves both directions."""
        for i, first in enumerate(tasks):
            for second in tasks[i + 1:]:
                config = single_task_config(recipe, first).model_copy(update={
                    "only": [first, second], "name": f"taskweb-{first}-with-{second}"})
                key = content_hash("joint", keys[first], keys[second])
                results, _ = runs.fit(config, f"{first}-with-{second}-{key}")
                yield (first, second), results
                yield (second, first), results
