"""Helpers of the data-driven mergers: run a task's batches through a backbone and its head."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn

from polytask.errors import ConfigError
from polytask.merge.base import MergeData, MergeTask, StateDict
from polytask.models.inputs import Encoded, collate
from polytask.tasks.data import trim_labels


def task_of(data: MergeData, expert: str, method: str) -> MergeTask:
    """The `MergeTask` of `expert`, or a `ConfigError` naming what is missing."""
    try:
        return data.tasks[expert]
    except KeyError:
        raise ConfigError(
            f"merge method {method!r}: expert {expert!r} has no merge data (tasks with data: "
            f"{', '.join(sorted(data.tasks)) or 'none'}); give each expert's task its "
            "training batches in MergeData.tasks.") from None


def features(backbone: nn.Module, inputs: Encoded, level: str) -> Tensor:
    """The backbone's features: `backbone(inputs, level)`, or `backbone(inputs)` for a module
    whose forward takes no level (as `MultiTaskModel` calls it)."""
    if "level" in inspect.signature(backbone.forward).parameters:
        return backbone(inputs, level)
    return backbone(inputs)


def limited_batches(task: MergeTask, rows: int) -> Iterator[tuple[Encoded, Tensor | None]]:
    """The task's batches until `rows` rows have been yielded (the last one cut to fit)."""
    seen = 0
    for inputs, labels in task.batches():
        if seen >= rows:
            return
        size = _batch_size(inputs)
        if seen + size > rows:
            keep = torch.arange(rows - seen)
            inputs = collate(inputs, keep)
            labels = None if labels is None else trim_labels(labels[keep], inputs)
            size = rows - seen
        seen += size
        yield inputs, labels


def single_examples(task: MergeTask, rows: int) -> Iterator[tuple[Encoded, Tensor | None]]:
    """At most `rows` one-row batches (padding trimmed to the row's own length)."""
    for inputs, labels in limited_batches(task, rows):
        for i in range(_batch_size(inputs)):
            index = torch.tensor([i])
            row = collate(inputs, index)
            yield row, None if labels is None else trim_labels(labels[index], row)


def _batch_size(inputs: Encoded) -> int:
    return int(next(iter(inputs.values())).shape[0])


def with_weights(data: MergeData, state: Mapping[str, Tensor]) -> nn.Module:
    """A fresh backbone holding `state`, in eval mode."""
    module = data.backbone(dict(state))
    return module.eval()


def averaged(base: Tensor, experts: Mapping[str, StateDict], name: str) -> Tensor:
    """The mean of parameter `name` over the experts, in the base's dtype; a non-floating
    tensor (an integer buffer such as position ids) is the base's, copied."""
    if not base.is_floating_point():
        return base.clone()
    stacked = torch.stack([state[name] for state in experts.values()])
    if stacked.dtype in (torch.float16, torch.bfloat16):
        stacked = stacked.float()
    return stacked.mean(dim=0).to(base.dtype)
