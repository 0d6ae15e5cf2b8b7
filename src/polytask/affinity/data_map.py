"""Data-map task affinity (STG-MTL).

Sherif, Abid, Elattar and ElHelw, "STG-MTL: Scalable Task Grouping for Multi-Task Learning
Using Data Maps" (arXiv 2307.03374, 2023/2024), on the data maps of Swayamdipta et al.,
"Dataset Cartography: Mapping and Diagnosing Datasets with Training Dynamics", EMNLP 2020.

During training, the probability the model gives each training row's gold label is recorded
at the end of every epoch of that task (or every `every` steps). Over the E records so far,
a row's *confidence* is the mean of those probabilities and its *variability* their standard
deviation (population std, as Swayamdipta et al. define it). A task is represented by:

- `points` (STG-MTL's representation): the (confidence, variability) of every row, after
  each record (the running data map, stacked over records, as STG-MTL stacks the map of
  every epoch), flattened; rows must be the same for every task, i.e. tasks labelling one
  shared dataset (only rows labelled for all the tasks are used);
- `histogram`: the share of the task's rows in each cell of a `bins` x `bins` grid over
  confidence in [0, 1] x variability in [0, 0.5] (the final map), which needs no shared rows.
`auto` takes `points` when every task reads the same dataset, else `histogram`.

Affinity: with d(i, j) the root-mean-square difference between the two representations,
``A[i][j] = mean_{k<l} d(k, l) − d(i, j)``: positive for pairs whose maps are closer than an
average pair; identical maps get the highest value. It is symmetric. STG-MTL then clusters
the representations with k-means and fuzzy memberships (fuzziness m = 1.07); with
`clusters: K` that clustering is reported in the matrix's `details`.

Records come from one run: `run: joint` (the paper's setting: the data maps are recorded
during the multi-task run of all the tasks, so one run serves every task; scalable to many
tasks) or `run: single` (one single-task run per task). Runs use the single-task recipe of
`polytask.train.baselines` and are cached under ``work_dir/data_map/`` (reused when
finished, resumed when interrupted). Only tasks of kind `classification` have a gold-label
probability; any other kind is refused with an error that names the task.
"""

from __future__ import annotations

import io
import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from rich.console import Console

from polytask.affinity.base import AFFINITY, AffinityMatrix, AffinityMethod
from polytask.affinity.taskweb import CachedRuns, quiet_recipe
from polytask.config import RunConfig
from polytask.errors import ConfigError, TrainingError
from polytask.files import atomic_write_bytes
from polytask.models.inputs import content_hash
from polytask.pipeline import resolve
from polytask.process import is_main_process
from polytask.tasks.data import PreparedData, eval_batches
from polytask.tasks.kinds import IGNORE
from polytask.train.baselines import baseline_dir, single_task_config
from polytask.train.callbacks import Callback, StepResult, TrainerControl, TrainerState
from polytask.train.trainer import Trainer

#: Variability is a standard deviation of probabilities, so it lies in [0, 0.5].
MAX_VARIABILITY = 0.5


def running_data_map(probabilities: np.ndarray) -> np.ndarray:
    """The data map after each record: `probabilities` (records x rows, the gold-label
    probability of each row at each record) -> (records x rows x 2) holding, after record
    e, each row's confidence (mean of records 1..e) and variability (their population std)."""
    counts = np.arange(1, probabilities.shape[0] + 1)[:, None]
    mean = np.cumsum(probabilities, axis=0) / counts
    second = np.cumsum(probabilities**2, axis=0) / counts
    variability = np.sqrt(np.clip(second - mean**2, 0.0, None))
    return np.stack([mean, variability], axis=-1)


def data_map(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's (confidence, variability) over all records (records x rows input)."""
    final = running_data_map(probabilities)[-1]
    return final[:, 0], final[:, 1]


def histogram(probabilities: np.ndarray, bins: int) -> np.ndarray:
    """The share of rows in each cell of a `bins` x `bins` grid over (confidence in [0, 1],
    variability in [0, 0.5]), flattened (the final data map as a distribution)."""
    confidence, variability = data_map(probabilities)
    counts, _, _ = np.histogram2d(confidence, variability, bins=bins,
                                  range=[[0.0, 1.0], [0.0, MAX_VARIABILITY]])
    return (counts / max(counts.sum(), 1.0)).ravel()


def map_affinity(representations: np.ndarray) -> np.ndarray:
    """``A[i][j] = mean_{k<l} d(k, l) − d(i, j)`` with d the RMS difference of the rows of
    `representations` (tasks x features); NaN diagonal."""
    diff = representations[:, None, :] - representations[None, :, :]
    distance = np.sqrt(np.mean(diff**2, axis=-1))
    upper = distance[np.triu_indices(len(representations), k=1)]
    affinity = upper.mean() - distance
    np.fill_diagonal(affinity, np.nan)
    return affinity


def fuzzy_memberships(representations: np.ndarray, clusters: int, fuzziness: float,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """STG-MTL's clustering: k-means centres, then each task's fuzzy c-means membership
    ``u_ic = 1 / Σ_k (d_ic / d_ik)^(2/(m−1))`` (m = `fuzziness`). Returns (tasks x clusters
    memberships, each task's hard cluster)."""
    from sklearn.cluster import KMeans

    centres = KMeans(n_clusters=clusters, n_init=10, random_state=seed).fit(
        representations).cluster_centers_
    distance = np.linalg.norm(representations[:, None, :] - centres[None, :, :], axis=-1)
    exponent = 2.0 / (fuzziness - 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):  # d = 0: handled just below
        log_distance = np.log(distance)
        ratios = exponent * (log_distance[:, :, None] - log_distance[:, None, :])
        top = ratios.max(axis=-1)  # 1 / Σ exp(r) as exp(−logsumexp(r)): no overflow
        membership = np.exp(-top - np.log(np.exp(ratios - top[..., None]).sum(axis=-1)))
    at_centre = distance == 0  # a task sitting on a centre belongs to it alone
    membership = np.where(at_centre.any(axis=1, keepdims=True), at_centre.astype(float),
                          np.nan_to_num(membership))
    return membership, membership.argmax(axis=1)


class GoldProbabilities(Callback):
    """Records, for each task, the probability the model gives each training row's gold
    label (NaN for a row without that label) at the end of each of the task's epochs, or
    every `every` steps, as ``<run>/data_map/<task>/<step>.npy``. `bind` it to the Trainer
    before it trains (it reads the trainer's prepared data and device). On a resume, records
    made after the restored checkpoint are dropped (they are made again, identically)."""

    def __init__(self, tasks: list[str], every: int | None) -> None:
        self.tasks = tasks
        self.every = every
        self.trainer: Trainer | None = None
        self.epochs_done: dict[str, int] = {}

    def bind(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, state: TrainerState, control: TrainerControl) -> None:
        for task in self.tasks:
            for record in records_of(state.run_dir, task):
                if int(record.stem) > state.step:
                    record.unlink()
        self.epochs_done = {t: math.floor(e) for t, e in state.epoch.items()}

    def on_step_end(self, state: TrainerState, control: TrainerControl,
                    step: StepResult) -> None:
        epochs = state.epoch
        for task in self.tasks:
            if self.every is not None:
                due = state.step % self.every == 0
            else:
                due = math.floor(epochs[task]) > self.epochs_done[task]
                self.epochs_done[task] = math.floor(epochs[task])
            if due and is_main_process():
                self._record(state, task)

    def _record(self, state: TrainerState, task: str) -> None:
        if self.trainer is None:
            raise RuntimeError("GoldProbabilities: bind() it to the Trainer before fit()")
        trainer = self.trainer
        values = gold_probabilities(trainer.model, trainer.data, task, trainer.device,
                                    trainer.config.train.eval_batch_size)
        buffer = io.BytesIO()
        np.save(buffer, values)
        atomic_write_bytes(state.run_dir / "data_map" / task / f"{state.step:09d}.npy",
                           buffer.getvalue())


def records_of(run_dir: Path, task: str) -> list[Path]:
    """The records of `task` in a run folder, in step order."""
    return sorted((run_dir / "data_map" / task).glob("*.npy"))


@torch.no_grad()
def gold_probabilities(model: torch.nn.Module, data: PreparedData, task: str,
                       device: torch.device, batch_size: int) -> np.ndarray:
    """The softmax probability of each training row's gold label (NaN where unlabelled)."""
    was_training = model.training
    model.eval()
    split = data.splits[data.task_source[task]]["train"]
    parts = []
    for inputs, labels in eval_batches(split, [task], batch_size):
        encoded = {k: v.to(device) for k, v in inputs.items()}
        probabilities = model({task: encoded}).outputs[task].float().softmax(-1).cpu()
        gold = labels[task]
        picked = probabilities.gather(1, gold.clamp(min=0)[:, None])[:, 0].double()
        parts.append(torch.where(gold == IGNORE, torch.nan, picked))
    model.train(was_training)
    return torch.cat(parts).numpy()


@AFFINITY.register(
    "data_map", paper="STG-MTL: Scalable Task Grouping for Multi-Task Learning Using Data "
    "Maps (Sherif et al., 2024)")
class DataMap(AffinityMethod):
    """Tasks with similar data maps (per-row confidence and variability of the gold-label
    probability across training) are grouped together; classification tasks only.

    Options: `steps` per run (default: the config's train.max_steps); `run` joint (one
    multi-task run records every task, as in STG-MTL) or single (one run per task); `every`:
    record every N steps instead of at each epoch end; `representation` auto, points or
    histogram (`bins` per axis); `clusters`: also report STG-MTL's fuzzy clustering into
    that many clusters, with fuzziness `fuzziness`.
    """

    def __init__(self, steps: int | None = None, run: Literal["joint", "single"] = "joint",
                 every: int | None = None,
                 representation: Literal["auto", "points", "histogram"] = "auto",
                 bins: int = 10, clusters: int | None = None, fuzziness: float = 1.07) -> None:
        if run not in ("joint", "single"):
            raise ValueError(f"data_map: run {run!r} is not joint or single")
        if representation not in ("auto", "points", "histogram"):
            raise ValueError(f"data_map: representation {representation!r} is not auto, "
                             "points or histogram")
        for name, value in (("steps", steps), ("every", every), ("bins", bins),
                            ("clusters", clusters)):
            if value is not None and value < 1:
                raise ValueError(f"data_map: {name} must be a positive integer, got {value}")
        if fuzziness <= 1.0:
            raise ValueError(f"data_map: fuzziness must be above 1 (STG-MTL uses 1.07), "
                             f"got {fuzziness}")
        self.steps, self.run, self.every = steps, run, every
        self.representation, self.bins = representation, bins
        self.clusters, self.fuzziness = clusters, fuzziness

    def measure(self, config: RunConfig, work_dir: Path, console: Console) -> AffinityMatrix:
        started = time.perf_counter()
        recipe = quiet_recipe(config, self.steps)
        tasks = self._classification_tasks(recipe)
        if self.clusters is not None and self.clusters > len(tasks):
            raise ConfigError(f"data_map: clusters {self.clusters} is more than the "
                              f"{len(tasks)} tasks; choose at most {len(tasks)}")
        runs = CachedRuns(Path(work_dir) / "data_map", console, "data_map")
        probabilities = self._record(recipe, tasks, runs)
        representation = self._representation(recipe, tasks)
        vectors = self._vectors(probabilities, tasks, representation)
        affinity = map_affinity(vectors)
        details: dict[str, Any] = {
            "run": self.run, "steps": recipe.train.max_steps, "representation": representation,
            "records": {t: int(probabilities[t].shape[0]) for t in tasks},
            "runs_trained": runs.trained, "runs_reused": runs.reused,
        }
        if self.clusters is not None:
            details["clustering"] = self._clustering(vectors, tasks, recipe.train.seed)
        for task in tasks:
            confidence, variability = data_map(probabilities[task])
            console.print(f"data_map {task}: {probabilities[task].shape[0]} records, mean "
                          f"confidence {np.nanmean(confidence):.3f}, mean variability "
                          f"{np.nanmean(variability):.3f}", highlight=False)
        return AffinityMatrix(
            method="data_map", tasks=tasks, values=affinity.tolist(),
            definition=("A[i][j] = mean_{k<l} d(k,l) − d(i,j), d = RMS difference of the "
                        f"tasks' data maps ({representation}: per-row confidence and "
                        "variability of the gold-label probability across training)"),
            direction="higher means more similar data maps (grouped together)",
            symmetric=True, seconds=time.perf_counter() - started, details=details)

    @staticmethod
    def _classification_tasks(config: RunConfig) -> list[str]:
        tasks = resolve(config).tasks
        others = [(t.name, t.kind) for t in tasks if t.kind != "classification"]
        if others:
            names = ", ".join(f"{n!r} (kind {k})" for n, k in others)
            keep = [t.name for t in tasks if t.kind == "classification"]
            raise ConfigError(
                f"data_map: task(s) {names} have no gold-label probability, which data maps "
                "are made of; only kind classification does. Measure data_map on the "
                f"classification tasks (only: {keep}), or use grad_cosine, tag or taskweb.")
        if len(tasks) < 2:
            raise ConfigError(f"data_map: needs at least two tasks, the config has "
                              f"{[t.name for t in tasks]}")
        return [t.name for t in tasks]

    def _record(self, recipe: RunConfig, tasks: list[str], runs: CachedRuns,
                ) -> dict[str, np.ndarray]:
        """Each task's records (records x rows), from the cached run(s) or new ones."""
        keys = [baseline_dir(recipe, t).name for t in tasks]
        groups = [tasks] if self.run == "joint" else [[t] for t in tasks]
        out: dict[str, np.ndarray] = {}
        for group in groups:
            config = single_task_config(recipe, group[0]).model_copy(
                update={"only": group, "name": f"data-map-{'-'.join(group)}"})
            key = content_hash("data_map", self.every, [keys[tasks.index(t)] for t in group])
            name = f"{group[0]}-{key}" if len(group) == 1 else f"joint-{key}"
            recorder = GoldProbabilities(group, self.every)
            _, directory = runs.fit(config, name, callbacks=[recorder], bind=recorder.bind)
            for task in group:
                out[task] = self._load(directory, task)
        return out

    @staticmethod
    def _load(directory: Path, task: str) -> np.ndarray:
        records = records_of(directory, task)
        if len(records) < 2:
            raise TrainingError(
                f"data_map: the run in {directory} recorded task {task!r} {len(records)} "
                "time(s); a data map needs at least 2 records (variability is a spread over "
                "records). Raise steps so the run covers 2+ epochs of the task, or set "
                "every (record every N steps).")
        return np.stack([np.load(path) for path in records])

    def _representation(self, recipe: RunConfig, tasks: list[str]) -> str:
        if self.representation != "auto":
            return self.representation
        resolved = resolve(recipe)
        own_data = {t.name for t in resolved.tasks if t.data is not None}
        return "points" if not own_data.intersection(tasks) else "histogram"

    def _vectors(self, probabilities: dict[str, np.ndarray], tasks: list[str],
                 representation: str) -> np.ndarray:
        """One row per task: its representation."""
        if representation == "histogram":
            return np.stack([histogram(probabilities[t], self.bins) for t in tasks])
        shapes = {t: probabilities[t].shape for t in tasks}
        if len(set(shapes.values())) > 1:
            raise ConfigError(
                f"data_map: representation points compares row by row, but the tasks' "
                f"records differ in shape (records x rows): {shapes}; the tasks must label "
                "one shared dataset. Use representation: histogram.")
        stacked = np.stack([probabilities[t] for t in tasks])  # tasks x records x rows
        labelled = ~np.isnan(stacked).any(axis=(0, 1))
        if not labelled.any():
            raise ConfigError("data_map: no training row is labelled for every task, so "
                              "representation points has nothing to compare; use "
                              "representation: histogram.")
        return np.stack([running_data_map(stacked[i][:, labelled]).ravel()
                         for i in range(len(tasks))])

    def _clustering(self, vectors: np.ndarray, tasks: list[str], seed: int) -> dict[str, Any]:
        assert self.clusters is not None
        membership, hard = fuzzy_memberships(vectors, self.clusters, self.fuzziness, seed)
        return {
            "clusters": self.clusters, "fuzziness": self.fuzziness,
            "membership": {t: membership[i].round(4).tolist() for i, t in enumerate(tasks)},
            "groups": [[t for i, t in enumerate(tasks) if hard[i] == c]
                       for c in range(self.clusters)],
        }

