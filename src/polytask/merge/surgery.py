"""Representation surgery: a small per-task module that removes the merged backbone's
representation bias.

Yang et al. 2024, "Representation Surgery for Multi-Task Model Merging" (ICML).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from polytask.errors import ConfigError
from polytask.merge import get
from polytask.merge._data import features, task_of, with_weights
from polytask.merge._unlabelled import device_of, frozen, input_batches, on_device, token_mask
from polytask.merge.base import MERGERS, MergeData, Merger, StateDict
from polytask.merge.zipit import task_state

#: prefix of the trained surgery modules' entries in the merged state dict
PREFIX = "surgery."


class RepresentationSurgery(nn.Module):
    """``z − up(relu(down(z)))``: the features minus their estimated bias, of rank `rank`.

    As in the authors' code, both projections have no bias; `down` has nn.Linear's default
    initialisation and `up` starts at zero, so a fresh module is the identity."""

    def __init__(self, dim: int, rank: int = 16) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = nn.Linear(rank, dim, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def forward(self, features: Tensor) -> Tensor:
        return features - self.up(torch.relu(self.down(features)))


def surgery_state(state: Mapping[str, Tensor], task: str) -> StateDict:
    """Task `task`'s surgery weights in `state` (keys ``surgery.<task>.<param>``), without the
    prefix; empty when the task has none."""
    prefix = f"{PREFIX}{task}."
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def backbone_state(state: Mapping[str, Tensor]) -> StateDict:
    """The merged state dict without its surgery entries."""
    return {key: value for key, value in state.items() if not key.startswith(PREFIX)}


def wrap_heads(heads: nn.ModuleDict, state: Mapping[str, Tensor]) -> None:
    """Put ``nn.Sequential(RepresentationSurgery, head)`` in place of each head of `heads`
    that has surgery weights in `state` (the other heads are left as they are)."""
    for task in list(heads.keys()):
        weights = surgery_state(state, task)
        if not weights:
            continue
        rank, dim = weights["down.weight"].shape
        module = RepresentationSurgery(dim, rank)
        module.load_state_dict(weights)
        device = device_of(heads[task])
        heads[task] = nn.Sequential(module.to(device), heads[task])


@MERGERS.register("surgery", paper="Representation Surgery for Multi-Task Model Merging (Yang "
                  "et al. 2024)")
class Surgery(Merger):
    """Any merging method (`base_method`, with `base_options`) followed by one
    `RepresentationSurgery` module per task between the merged backbone and the task's head.

    Each module is trained with Adam to minimise the L1 distance between the surgered merged
    features and the expert's features (``data.backbone(expert_state)``) on the task's
    unlabelled inputs of `MergeData.unlabelled_split`; the backbones are frozen, so both
    features are computed once and the modules trained for `steps` passes over them (one
    batch of every task per step; padding tokens excluded for token-level tasks). The paper
    uses rank 16, lr 1e-3, 500 steps.

    The result is the base method's merged state dict plus the modules' weights under
    ``surgery.<task>.down.weight`` (rank x dim) and ``surgery.<task>.up.weight``
    (dim x rank); `wrap_heads` puts them in front of the heads. A base method whose result
    holds per-task backbones (zipit's partial zipping) is supported: each task's module is
    trained on its own backbone. `report()` gives the base method's notes and each task's L1
    distance before and after surgery.

    Grid: rank ∈ {4, 16} (the paper uses 16; a smaller rank suits small backbones)."""

    needs_data = True
    unlabelled_inputs = True
    grid: ClassVar[dict[str, list[Any]]] = {"rank": [4, 16]}

    def __init__(self, base_method: str = "task_arithmetic",
                 base_options: dict[str, Any] | None = None, rank: int = 16, lr: float = 1e-3,
                 steps: int = 500) -> None:
        super().__init__()
        if base_method == "surgery":
            raise ConfigError("surgery: base_method cannot be 'surgery'; name the method whose "
                              "merge it corrects, e.g. task_arithmetic or adamerging.")
        if rank < 1 or lr <= 0 or steps < 0:
            raise ConfigError(f"surgery: rank={rank!r} must be >= 1, lr={lr!r} > 0 and "
                              f"steps={steps!r} >= 0.")
        try:
            self.base = get(base_method, **(base_options or {}))
        except ConfigError as error:
            raise ConfigError(f"surgery.base_method/base_options: {error}") from None
        self.rank = rank
        self.lr = lr
        self.steps = steps

    def _merge(self, base: StateDict, experts: Mapping[str, StateDict],
               data: MergeData | None) -> StateDict:
        assert data is not None  # merge() checked
        merged = self.base.merge(base, experts, data)
        for line in self.base.report():
            self.note(f"{self.base.name}: {line}")
        pairs = {task: self._feature_pairs(data, merged, experts[task], task) for task in experts}
        modules = {task: RepresentationSurgery(pairs[task][0][0].shape[-1], self.rank)
                   for task in experts}
        before = self._distances(modules, pairs)
        self._train(modules, pairs)
        after = self._distances(modules, pairs)
        self.note(f"surgery rank {self.rank}, {self.steps} steps on unlabelled inputs of the "
                  f"{data.unlabelled_split!r} split")
        for task in experts:
            self.note(f"{task}: L1 distance to the expert's features {before[task]:.4f} -> "
                      f"{after[task]:.4f}")
        out = dict(merged)
        for task, module in modules.items():
            out.update({f"{PREFIX}{task}.{key}": value.detach().clone()
                        for key, value in module.state_dict().items()})
        return out

    def _feature_pairs(self, data: MergeData, merged: StateDict, expert: StateDict,
                       task: str) -> list[tuple[Tensor, Tensor, Tensor | None]]:
        """Per input batch: the merged backbone's features, the expert's, and the token mask
        (None for sequence-level features)."""
        spec = task_of(data, task, self.name)
        merged_net = with_weights(data, task_state(backbone_state(merged), task))
        expert_net = with_weights(data, expert)
        pairs = []
        with torch.no_grad(), frozen(merged_net, expert_net):
            for inputs in input_batches(spec, self.name):
                ours = features(merged_net, on_device(inputs, device_of(merged_net)),
                                spec.kind.level)
                theirs = features(expert_net, on_device(inputs, device_of(expert_net)),
                                  spec.kind.level)
                pairs.append((ours.cpu(), theirs.cpu(), token_mask(inputs, ours.cpu())))
        return pairs

    def _train(self, modules: dict[str, RepresentationSurgery],
               pairs: dict[str, list[tuple[Tensor, Tensor, Tensor | None]]]) -> None:
        params = [p for module in modules.values() for p in module.parameters()]
        optimizer = torch.optim.Adam(params, lr=self.lr)
        for step in range(self.steps):
            loss = sum((_l1(modules[task], *batches[step % len(batches)])
                        for task, batches in pairs.items()), torch.zeros(()))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    @staticmethod
    def _distances(modules: dict[str, RepresentationSurgery],
                   pairs: dict[str, list[tuple[Tensor, Tensor, Tensor | None]]]
                   ) -> dict[str, float]:
        """Each task's mean L1 distance over all its batches."""
        with torch.no_grad():
            return {task: sum(float(_l1(modules[task], *b)) for b in batches) / len(batches)
                    for task, batches in pairs.items()}


def _l1(module: RepresentationSurgery, merged: Tensor, expert: Tensor,
        mask: Tensor | None) -> Tensor:
    """Mean absolute difference between the surgered merged features and the expert's."""
    difference = (module(merged) - expert).abs()
    return difference[mask].mean() if mask is not None else difference.mean()
