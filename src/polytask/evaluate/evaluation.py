"""Run a model over a split and compute every task's metrics."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from polytask.evaluate.delta import relative_change
from polytask.models.generative import decoding
from polytask.models.model import MultiTaskModel
from polytask.process import World
from polytask.tasks.data import PreparedData, eval_batches
from polytask.tasks.kinds import IGNORE


def _concat(parts: list[Tensor], fill: float) -> Tensor:
    """Concatenate batch results; per-token tensors are padded to the longest first."""
    if parts and parts[0].dim() == 2 and parts[0].dtype == torch.long:
        width = max(p.shape[1] for p in parts)
        parts = [F.pad(p, (0, width - p.shape[1]), value=int(fill)) for p in parts]
    return torch.cat(parts) if parts else torch.empty(0)


@torch.no_grad()
def predict_split(model: MultiTaskModel, data: PreparedData, split: str, batch_size: int,
                  device: torch.device, tasks: Sequence[str] | None = None,
                  world: World | None = None) -> dict[str, tuple[Tensor, Tensor]]:
    """`{task: (predictions, labels)}` over a whole split (one backbone pass per batch).
    Under torchrun each rank predicts its share of the rows and the shares are gathered."""
    world = world or World()
    was_training = model.training
    model.eval()
    names = list(tasks or [t.name for t in data.tasks])
    collected: dict[str, tuple[list[Tensor], list[Tensor]]] = {t: ([], []) for t in names}
    for source, readers in data.sources_of(names).items():
        rows = data.splits[source][split]
        for inputs, labels in eval_batches(rows, readers, batch_size, world.shard(rows.size)):
            on_device = {k: v.to(device) for k, v in inputs.items()}
            with decoding(model):  # generation tasks generate text (no-op for the others)
                outputs = model({t: on_device for t in readers}).outputs
            for task in readers:
                prediction = data.kinds[task].predict(outputs[task]).cpu()
                collected[task][0].append(prediction)
                collected[task][1].append(labels[task])
    model.train(was_training)
    if world.distributed:
        shares = world.gather(collected)
        collected = {t: ([p for s in shares for p in s[t][0]], [lab for s in shares
                                                               for lab in s[t][1]])
                     for t in collected}
    return {t: (_concat(p, 0), _concat(lab, IGNORE)) for t, (p, lab) in collected.items()}


def evaluate(model: MultiTaskModel, data: PreparedData, split: str, batch_size: int,
             device: torch.device, world: World | None = None) -> dict[str, dict[str, float]]:
    """Every metric of every task on `split`."""
    results = predict_split(model, data, split, batch_size, device, world=world)
    return {t: data.kinds[t].metrics(p, lab) for t, (p, lab) in results.items()}


def primary(metrics: dict[str, dict[str, float]], data: PreparedData) -> dict[str, float]:
    """Each task's primary metric."""
    return {t: metrics[t][data.kinds[t].metric] for t in metrics}


def selection_score(current: dict[str, float], reference: dict[str, float],
                    data: PreparedData) -> float:
    """Mean relative change (%) of the primary metrics against a reference evaluation,
    positive = better. Scale-free, so an MAE in hours and an accuracy weigh alike."""
    changes = []
    for task, value in current.items():
        base = reference[task]
        better = data.kinds[task].higher_is_better
        changes.append(0.0 if base == 0 else relative_change(value, base, better))
    return sum(changes) / len(changes)
