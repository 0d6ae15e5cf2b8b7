"""A merged model as an ordinary run directory, which `polytask eval`, `polytask predict`,
`polytask report`, `polytask export` and `polytask.load` accept.

Layout (as a trained run's)::

    config.yaml                the merge config: the run's tasks on hard sharing
    splits.json                the data's fingerprints and carved rows (for `polytask eval`)
    results.json               test metrics and Δm% against the experts, plus a `merge` record
    model/model.safetensors    merged backbone + each expert's own head
    model/meta.json            as a trained run's, plus the `merge` record

The `merge` record names the method, its chosen hyperparameters, the experts' run folders,
the split the hyperparameters were chosen on and, for representation surgery, the tasks whose
head is `nn.Sequential(RepresentationSurgery, head)` (`surgery_heads`): their weights are
`heads.<task>.0.*` (the surgery module) and `heads.<task>.1.*` (the expert's head), and
`restore_heads` rebuilds that structure before the weights are loaded.

A merge that keeps backbone layers per task (zipit's partial zipping, `zipit.<task>.*` keys;
on the MLP backbone zipit always keeps the last layer per task) is not one backbone plus
heads: it is evaluated task by task and written as one run directory per task,
`OUT/merged/<method>/<task>/` (`write_task_runs`), each an ordinary single-task run: its
config restricted to the task (`only: [task]`), that task's backbone
(`polytask.merge.zipit.task_state`) and its expert's head, its own test metrics.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from polytask.config import RunConfig
from polytask.merge.base import StateDict
from polytask.merge.experts import Experts, evaluate_tasks, load_backbone
from polytask.merge.surgery import wrap_heads
from polytask.merge.zipit import is_per_task, task_state
from polytask.models.model import MultiTaskModel
from polytask.tasks.data import PreparedData
from polytask.train import run_dir as run_dir_guard
from polytask.train.results import save_model, write_json

#: meta.json / results.json key of the merge record.
MERGE_KEY = "merge"
#: Keys of a merged state dict that hold per-task surgery modules (`surgery.<task>.<param>`).
SURGERY_PREFIX = "surgery."


def split_surgery(state: Mapping[str, Tensor]) -> tuple[StateDict, StateDict]:
    """(backbone weights, surgery weights) of what a merger returned."""
    backbone = {k: v for k, v in state.items() if not k.startswith(SURGERY_PREFIX)}
    surgery = {k: v for k, v in state.items() if k.startswith(SURGERY_PREFIX)}
    return backbone, surgery


def merged_model(experts: Experts, merged: Mapping[str, Tensor]) -> MultiTaskModel:
    """The merge model holding `merged` (a merger's output): the merged backbone and each
    expert's head, behind its surgery module when `merged` holds one."""
    backbone, surgery = split_surgery(merged)
    load_backbone(experts, backbone)
    heads: nn.ModuleDict = experts.model.heads
    if surgery:
        heads = copy.deepcopy(heads)
        wrap_heads(heads, surgery)
    return MultiTaskModel(experts.model.backbone, dict(heads), experts.model.architecture,
                          experts.model.levels)


def is_single_model(merged: Mapping[str, Tensor]) -> bool:
    """False when `merged` keeps some backbone layers per task (zipit's partial zipping):
    such a merge is evaluated task by task and written as one run directory per task."""
    return not is_per_task(split_surgery(merged)[0])


def evaluate_merged(experts: Experts, merged: Mapping[str, Tensor],
                    split: str) -> dict[str, dict[str, float]]:
    """Every task's metrics on `split` with the merged model (task by task, each on its own
    backbone, when `merged` keeps per-task layers)."""
    batch = experts.config.train.eval_batch_size
    if is_single_model(merged):
        return evaluate_tasks(merged_model(experts, merged), experts.data, split, experts.tasks,
                              batch)
    backbone, surgery = split_surgery(merged)
    metrics: dict[str, dict[str, float]] = {}
    for task in experts.tasks:
        model = merged_model(experts, {**task_state(backbone, task), **surgery})
        metrics.update(evaluate_tasks(model, experts.data, split, [task], batch))
    return metrics


def surgery_heads(merged: Mapping[str, Tensor]) -> list[str]:
    """The tasks whose head has a surgery module in `merged`."""
    return sorted({k.removeprefix(SURGERY_PREFIX).split(".")[0]
                   for k in split_surgery(merged)[1]})


def restore_heads(model: MultiTaskModel, record: Mapping[str, Any],
                  weights: Mapping[str, Tensor]) -> None:
    """Give `model` the head structure of a merged run (`record`: meta.json's `merge`
    record) so that its saved `weights` load: surgery heads are wrapped again."""
    state = {}
    for task in record.get("surgery_heads", []):
        prefix = f"heads.{task}.0."
        state.update({f"{SURGERY_PREFIX}{task}.{k.removeprefix(prefix)}": v
                      for k, v in weights.items() if k.startswith(prefix)})
    if state:
        wrap_heads(model.heads, state)


def write_merged_run(directory: Path, experts: Experts, model: MultiTaskModel,
                     record: Mapping[str, Any], results: Mapping[str, Any]) -> None:
    """Write a merged model (see the module docstring) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / run_dir_guard.MARKER).touch()
    config = experts.config
    run_dir_guard.write_config(directory, config.dump())
    write_json(directory / "splits.json", experts.data.record)
    save_model(directory / "model", model, experts.data, experts.spec, experts.encoder, config)
    meta_path = directory / "model" / "meta.json"
    meta = json.loads(meta_path.read_text())
    write_json(meta_path, {**meta, MERGE_KEY: dict(record)})
    write_json(directory / "results.json", {**results, MERGE_KEY: dict(record)})


#: Builds a merged run's results.json document from its config and data.
ResultsOf = Callable[[RunConfig, PreparedData], dict[str, Any]]


def task_data(data: PreparedData, task: str) -> PreparedData:
    """`data` restricted to `task` and its source (as `only: [task]` would prepare it)."""
    source = data.task_source[task]
    return dataclasses.replace(
        data, tasks=[t for t in data.tasks if t.name == task], kinds={task: data.kinds[task]},
        task_source={task: source}, splits={source: data.splits[source]},
        record={**data.record, "sources": {source: data.record["sources"][source]}})


def task_model(experts: Experts, merged: Mapping[str, Tensor], task: str) -> MultiTaskModel:
    """`task`'s single-task model of a per-task merge: its backbone (shared weights plus its
    own `zipit.<task>.*` layers), its expert's head (behind its surgery module, if any)."""
    backbone, surgery = split_surgery(merged)
    model = merged_model(experts, {**task_state(backbone, task), **surgery})
    return MultiTaskModel(model.backbone, {task: model.heads[task]}, model.architecture,
                          {task: model.levels[task]})


def write_task_runs(directory: Path, experts: Experts, merged: Mapping[str, Tensor],
                    record: Mapping[str, Any], results_of: ResultsOf) -> None:
    """Write a per-task merge as one single-task run directory per task,
    `directory/<task>/` (see the module docstring)."""
    for task in experts.tasks:
        config = experts.config.model_copy(update={"only": [task]})
        data = task_data(experts.data, task)
        alone = dataclasses.replace(experts, config=config, data=data)
        write_merged_run(directory / task, alone, task_model(experts, merged, task), record,
                         results_of(config, data))
