"""Mixed-task batches: the inputs of several tasks joined into one batch, and split back.

With a multi-task adapter every example carries its task id, so the examples of all tasks
that read the same level go through the backbone in one pass. Token tensors of different
lengths are padded to the longest (attention mask 0, word index -1), and token-level
features are trimmed back to each part's own length, so each part's outputs match a pass
over that part alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from polytask.models.inputs import Encoded

#: Padding value of each padded key (0 for the others: pad token, masked out anyway).
_PAD_VALUES = {"word_index": -1}


@dataclass(frozen=True)
class Part:
    """The rows of one inputs object in a mixed batch, read by `tasks` (routed as `route`)."""

    inputs: Encoded | Tensor
    tasks: tuple[str, ...]
    route: str


def parts_of(tasks: Sequence[str], inputs_by_task: Mapping[str, Encoded | Tensor],
             per_task: bool) -> list[Part]:
    """One part per task (`per_task`: each task's rows are routed to its own parameters, so
    tasks reading the same inputs object each get a copy), else one per inputs object."""
    if per_task:
        return [Part(inputs_by_task[t], (t,), t) for t in tasks]
    parts: dict[int, list[str]] = {}
    for task in tasks:
        parts.setdefault(id(inputs_by_task[task]), []).append(task)
    return [Part(inputs_by_task[names[0]], tuple(names), names[0]) for names in parts.values()]


def rows(inputs: Encoded | Tensor) -> int:
    return int(next(iter(inputs.values())).shape[0] if isinstance(inputs, dict)
               else inputs.shape[0])


def concat(parts: Sequence[Part]) -> Encoded | Tensor:
    """The parts' inputs as one batch (the first part's object when there is only one)."""
    if len(parts) == 1:
        return parts[0].inputs
    first = parts[0].inputs
    if not isinstance(first, dict):
        return torch.cat([_tensor(p.inputs) for p in parts])
    shared = [key for key in first if all(key in _encoded(p.inputs) for p in parts)]
    return {key: _join([_encoded(p.inputs)[key] for p in parts], _PAD_VALUES.get(key, 0))
            for key in shared}  # a key some part lacks is one no joined pass reads


def _tensor(inputs: Encoded | Tensor) -> Tensor:
    if isinstance(inputs, dict):
        raise TypeError("a mixed batch cannot join a tensor with a dict of tensors")
    return inputs


def _encoded(inputs: Encoded | Tensor) -> Encoded:
    if not isinstance(inputs, dict):
        raise TypeError("a mixed batch cannot join a dict of tensors with a tensor")
    return inputs


def _join(tensors: list[Tensor], pad: int) -> Tensor:
    """Concatenate along rows, right-padding every other dimension to the longest (a
    generation task's B x C x L label candidates differ in C as well as L)."""
    if tensors[0].dim() > 1:
        sizes = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
        tensors = [F.pad(t, [n for d in reversed(range(1, t.dim()))
                             for n in (0, sizes[d - 1] - t.shape[d])], value=pad)
                   for t in tensors]
    return torch.cat(tensors)


def split(features: Tensor, parts: Sequence[Part], token_level: bool) -> list[Tensor]:
    """Each part's rows of `features`; token-level features are trimmed to the part's own
    sequence length (its attention mask's width)."""
    pieces = list(torch.split(features, [rows(p.inputs) for p in parts]))
    if not token_level or len(parts) == 1:
        return pieces
    return [piece[:, :_length(part.inputs)] if _length(part.inputs) else piece
            for piece, part in zip(pieces, parts, strict=True)]


def _length(inputs: Encoded | Tensor) -> int:
    if isinstance(inputs, dict) and "attention_mask" in inputs:
        return int(inputs["attention_mask"].shape[-1])
    return 0


def task_ids(parts: Sequence[Part], index: Mapping[str, int], device: torch.device) -> Tensor:
    """The (N,) task index of every row of the joined batch."""
    return torch.cat([torch.full((rows(p.inputs),), index[p.route], dtype=torch.long,
                                 device=device) for p in parts])
