"""The experts a merge starts from: one single-task baseline per task, all fine-tuned from the
same base backbone, with what the regime needs around them (prepared data, the base, each
expert's backbone and head, the data the data-driven methods get).

The experts are polytask's single-task baselines (`polytask.train.baselines`): trained when
missing, reused from the cache otherwise. Each was trained with hard sharing, so its state
dict holds `backbone.*` (what is merged) and `heads.<task>.*` (kept as it is).

The base is what every expert started from: the pretrained encoder for a Hugging Face
backbone, the seeded initialisation for the MLP backbone. `load_experts` rebuilds it from the
config and checks each expert against it (see `check_same_start`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import Tensor, nn

from polytask.config import MethodConfig, RunConfig
from polytask.errors import ConfigError
from polytask.evaluate.evaluation import predict_split
from polytask.merge.base import MERGERS, MergeData, MergeTask, StateDict
from polytask.models.inputs import Encoded, TabularInputs, TextInputs, collate
from polytask.models.model import MultiTaskModel
from polytask.models.spec import BackboneSpec
from polytask.pipeline import prepare, resolve
from polytask.tasks.data import PreparedData, trim_labels
from polytask.train.baselines import baseline_dir, single_task_config
from polytask.train.checkpoint import load_weights_file, save_weights
from polytask.train.trainer import train_baselines

BACKBONE = "backbone."

FROZEN_MESSAGE = (
    "model.backbone.trainable_layers is 0 (the backbone is frozen), so every expert's backbone "
    "equals the pretrained one and merging changes nothing; remove trainable_layers (or set it "
    "above 0) so the experts fine-tune the backbone")
UNCHANGED_MESSAGE = (
    "merge: no expert changed the base backbone (were its parameters frozen?), so merging "
    "changes nothing; fine-tune the backbone in the single-task baselines")


@dataclass
class Experts:
    """One expert per task around the shared base.

    `model` is the merge model (the run's tasks, hard sharing) whose heads are the experts'
    heads; its backbone is reloaded with whatever state is evaluated. `base` and `backbones`
    hold backbone state dicts (keys without the `backbone.` prefix)."""

    config: RunConfig
    data: PreparedData
    model: MultiTaskModel
    encoder: TextInputs | TabularInputs
    spec: BackboneSpec
    base: StateDict
    backbones: dict[str, StateDict]
    dirs: dict[str, Path]

    @property
    def tasks(self) -> list[str]:
        return [t.name for t in self.data.tasks]


def merge_config(config: RunConfig) -> RunConfig:
    """The config of a merged model: the run's tasks on hard sharing, as the experts were
    trained (every head reads the backbone's features directly)."""
    model = config.model.model_copy(update={"architecture": MethodConfig(name="hard_sharing")})
    return config.model_copy(update={"model": model, "baselines": "none"})


def check_trainable(config: RunConfig) -> None:
    """Refuse a config whose experts could not differ from the base (a frozen encoder)."""
    spec = resolve(config).backbone
    if spec.type == "hf" and spec.trainable_layers == 0:
        raise ConfigError(FROZEN_MESSAGE)


def backbone_state(weights: Mapping[str, Tensor]) -> StateDict:
    """The `backbone.*` entries of a model state dict, without the prefix."""
    return {k.removeprefix(BACKBONE): v for k, v in weights.items() if k.startswith(BACKBONE)}


def _cloned(state: Mapping[str, Tensor]) -> StateDict:
    return {k: v.detach().clone() for k, v in state.items()}


def _same(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def check_same_start(config: RunConfig, task: str, base: StateDict,
                     encoder: TextInputs | TabularInputs, directory: Path) -> None:
    """Raise ConfigError unless the expert of `task` was trained from `base`.

    A Hugging Face expert loads the same pretrained weights when its backbone settings are the
    run's (read from its meta.json). An MLP expert starts from the seeded initialisation its
    own single-task config builds, over input columns standardised with its own training rows:
    both are rebuilt here and compared with the base and the run's input encoder."""
    meta = json.loads((directory / "model" / "meta.json").read_text())
    spec = resolve(config).backbone
    where = f"merge: the expert of task {task!r} ({directory})"
    if spec.type == "hf":
        if meta["backbone"] != spec.model_dump(mode="json"):
            raise ConfigError(f"{where} was trained with other backbone settings "
                              f"({meta['backbone']}); delete that folder to retrain it")
        return
    _, model, own_encoder, _ = prepare(single_task_config(config, task))
    if own_encoder.state() != encoder.state():
        raise ConfigError(
            f"{where} reads its input columns with other statistics than the other tasks (the "
            "MLP backbone standardises them on each expert's own training rows), so the experts "
            "do not share an input layer to merge. Put the tasks on one shared table "
            "(top-level `data:`), or use a text backbone (type: hf).")
    if not _same(model.backbone.state_dict(), base):
        raise ConfigError(f"{where} did not start from the base backbone (its seeded "
                          "initialisation differs); set the same train.seed for every task")


def record_base(base: StateDict, out: Path) -> None:
    """Write the base to `out/base/backbone.safetensors`, or check it against the one a
    previous merge into `out` recorded."""
    path = out / "base" / "backbone.safetensors"
    if path.exists():
        if not _same(load_weights_file(path), base):
            raise ConfigError(f"merge: the base backbone differs from the one recorded in {path} "
                              "by an earlier merge into this folder (another backbone, seed or "
                              "data); pass another --out")
        return
    save_weights(base, path)


def load_experts(config: RunConfig, console: Console, check: bool = True) -> Experts:
    """Train the missing single-task baselines, then load every expert around the base."""
    check_trainable(config)
    train_baselines(config, console)
    merged = merge_config(config)
    data, model, encoder, spec = prepare(merged)
    base = _cloned(model.backbone.state_dict())
    backbones: dict[str, StateDict] = {}
    dirs: dict[str, Path] = {}
    for task in [t.name for t in data.tasks]:
        directory = baseline_dir(config, task)
        weights = load_weights_file(directory / "model" / "model.safetensors")
        if check:
            check_same_start(config, task, base, encoder, directory)
        backbones[task] = backbone_state(weights)
        prefix = f"heads.{task}."
        model.heads[task].load_state_dict(
            {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)})
        dirs[task] = directory
    if all(_same(state, base) for state in backbones.values()):
        raise ConfigError(UNCHANGED_MESSAGE)
    return Experts(merged, data, model, encoder, spec, base, backbones, dirs)


# -- evaluation ---------------------------------------------------------------------------
def load_backbone(experts: Experts, state: Mapping[str, Tensor]) -> None:
    """Put `state` into the merge model's backbone (in place)."""
    experts.model.backbone.load_state_dict(state)


def evaluate_tasks(model: MultiTaskModel, data: PreparedData, split: str,
                   tasks: Sequence[str], batch_size: int) -> dict[str, dict[str, float]]:
    """Every metric of `tasks` on `split`."""
    found = predict_split(model, data, split, batch_size, torch.device("cpu"), tasks=tasks)
    return {t: data.kinds[t].metrics(p, labels) for t, (p, labels) in found.items()}


def evaluate_experts(experts: Experts, split: str) -> dict[str, dict[str, float]]:
    """Each expert (its own backbone and head) on its own task."""
    metrics: dict[str, dict[str, float]] = {}
    batch = experts.config.train.eval_batch_size
    for task, state in experts.backbones.items():
        load_backbone(experts, state)
        metrics.update(evaluate_tasks(experts.model, experts.data, split, [task], batch))
    return metrics


# -- what the data-driven methods get ----------------------------------------------------
def _frozen_copy(module: nn.Module) -> nn.Module:
    module = copy.deepcopy(module).eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def _batches(data: PreparedData, task: str, split: str, rows: int, batch_size: int,
             labelled: bool, seed: int) -> Callable[[], Iterator[tuple[Encoded, Tensor | None]]]:
    """A fresh iterator over a seeded sample of at most `rows` rows of `task`'s `split`."""
    part = data.splits[data.task_source[task]][split]
    chosen = torch.randperm(part.size, generator=torch.Generator().manual_seed(seed))[:rows]

    def batches() -> Iterator[tuple[Encoded, Tensor | None]]:
        for start in range(0, chosen.numel(), batch_size):
            indices = chosen[start:start + batch_size]
            inputs = collate(part.inputs, indices)
            labels = trim_labels(part.labels[task][indices], inputs) if labelled else None
            yield inputs, labels

    return batches


def merge_data(experts: Experts, method: str, unlabelled_split: str, rows: int,
               batch_size: int = 32) -> MergeData:
    """The `MergeData` of `method`: each task's frozen expert head and a seeded sample of its
    rows: labelled `train` rows, or unlabelled `unlabelled_split` inputs for a method whose
    `unlabelled_inputs` is set."""
    labelled = not MERGERS.get(method).unlabelled_inputs
    split = "train" if labelled else unlabelled_split
    template = experts.model.backbone
    seed = experts.config.train.seed

    def backbone(state: StateDict) -> nn.Module:
        module = copy.deepcopy(template)
        module.load_state_dict(state)
        return module.eval()

    tasks = {
        task: MergeTask(task, _frozen_copy(experts.model.heads[task]), experts.data.kinds[task],
                        _batches(experts.data, task, split, rows, batch_size, labelled, seed))
        for task in experts.tasks}
    return MergeData(backbone, tasks, unlabelled_split)


def task_vector_cosines(experts: Experts) -> dict[str, Any]:
    """Pairwise cosine similarity of the task vectors (expert - base, floating tensors of the
    backbone, flattened together): `{"tasks": [...], "matrix": [[...]]}`."""
    names = experts.tasks
    vectors = torch.stack([
        torch.cat([(state[k] - experts.base[k]).flatten().double()
                   for k in experts.base if experts.base[k].is_floating_point()])
        for state in (experts.backbones[t] for t in names)])
    norms = vectors.norm(dim=1).clamp(min=1e-30)
    matrix = (vectors @ vectors.T) / (norms[:, None] * norms[None, :])
    return {"tasks": names, "matrix": [[round(float(v), 6) for v in row] for row in matrix]}
