"""Helpers of the methods that learn from unlabelled inputs (adamerging, surgery, zipit):
cycle through a task's batches, move them to the backbone's device, and find which rows of
token-level features are real tokens."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from polytask.errors import DataError
from polytask.merge.base import MergeTask
from polytask.models.inputs import Encoded


def device_of(module: nn.Module) -> torch.device:
    """Where the module's weights are (CPU for a module without any)."""
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


def on_device(inputs: Encoded, device: torch.device) -> Encoded:
    """The batch's tensors on `device`."""
    return {key: value.to(device) for key, value in inputs.items()}


def _no_batches(task: MergeTask, method: str) -> DataError:
    return DataError(
        f"merge method {method!r}: task {task.name!r} has no merge data batches; give it some "
        "rows in the split the merge data comes from.")


def input_batches(task: MergeTask, method: str) -> list[Encoded]:
    """Every input batch of the task's merge data (labels dropped); `DataError` if none."""
    batches = [inputs for inputs, _ in task.batches()]
    if not batches:
        raise _no_batches(task, method)
    return batches


def endless(task: MergeTask, method: str) -> Iterator[Encoded]:
    """The task's input batches (labels dropped), starting over each time they run out;
    `DataError` if there are none."""
    while True:
        empty = True
        for inputs, _ in task.batches():
            empty = False
            yield inputs
        if empty:
            raise _no_batches(task, method)


def token_mask(inputs: Encoded, features: Tensor) -> Tensor | None:
    """For token-level outputs (B x L x ...), which positions are real tokens (B x L bool,
    from `attention_mask`); None for sequence-level outputs or inputs without a mask."""
    mask = inputs.get("attention_mask")
    if mask is None or features.dim() < 3 or tuple(mask.shape) != tuple(features.shape[:2]):
        return None
    return mask.to(features.device).bool()


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of `values` (one per row, or B x L per token) over the rows `mask` keeps."""
    if mask is None:
        return values.mean()
    return values[mask].mean()


@contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Within the block, the modules' parameters take no gradient (restored afterwards)."""
    params = [p for module in modules for p in module.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
