"""Fisher merging: a per-parameter weighted average with each expert's diagonal Fisher."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from polytask.errors import ConfigError
from polytask.merge._data import averaged, features, single_examples, task_of, with_weights
from polytask.merge.base import MERGERS, MergeData, Merger, MergeTask, StateDict
from polytask.tasks.kinds import IGNORE, Classification, MultiLabel, Regression, TaskKind


@MERGERS.register("fisher", paper="Merging Models with Fisher-Weighted Averaging (Matena & "
                  "Raffel 2022)")
class Fisher(Merger):
    """``θ = Σ_i (F_i + ε) θ_i / Σ_i (F_i + ε)`` per parameter entry, where F_i is expert i's
    diagonal Fisher information estimated on its own task's training rows.

    Estimate: for each of at most `examples` rows, one label ``y`` is **sampled** from the
    expert's predictive distribution (the paper's Fisher, not the "empirical" Fisher of the
    true labels), and the squared gradient of ``log p(y | x)`` w.r.t. the backbone's
    parameters is averaged over rows. The predictive distribution follows the task kind:
    categorical over the classes (classification; per labelled token for token
    classification), independent Bernoulli per label (multi-label), unit-variance Gaussian
    around the output (regression). ε (`epsilon`) keeps entries no gradient reaches at the
    plain average; buffers are averaged. No grid (the method has no tuned hyperparameter)."""

    needs_data: ClassVar[bool] = True
    grid: ClassVar[dict[str, list[Any]]] = {}

    def __init__(self, examples: int = 256, epsilon: float = 1e-8, seed: int = 0) -> None:
        super().__init__()
        if examples < 1:
            raise ConfigError(f"fisher: examples={examples!r}; use at least 1 row per task.")
        self.examples = examples
        self.epsilon = epsilon
        self.seed = seed

    def _merge(self, base: StateDict, experts: Mapping[str, StateDict],
               data: MergeData | None) -> StateDict:
        assert data is not None
        fishers = {name: self.fisher(data, task_of(data, name, "fisher"), state)
                   for name, state in experts.items()}
        parameters = set(next(iter(fishers.values())))
        merged: StateDict = {}
        for key, tensor in base.items():
            if key in parameters and tensor.is_floating_point():
                merged[key] = self._weighted(key, experts, fishers).to(tensor.dtype)
            else:
                merged[key] = averaged(tensor, experts, key)
        buffers = [k for k in base if k not in parameters]
        if buffers:
            self.note(f"{len(buffers)} buffers averaged (no Fisher for non-parameters), e.g. "
                      f"{buffers[0]}")
        return merged

    def _weighted(self, key: str, experts: Mapping[str, StateDict],
                  fishers: Mapping[str, Mapping[str, Tensor]]) -> Tensor:
        values = torch.stack([state[key] for state in experts.values()])
        values = values.to(torch.promote_types(values.dtype, torch.float32))
        weights = torch.stack([fishers[n][key] + self.epsilon for n in experts]).to(values.dtype)
        return (weights * values).sum(dim=0) / weights.sum(dim=0)

    def fisher(self, data: MergeData, task: MergeTask, state: StateDict) -> dict[str, Tensor]:
        """The diagonal Fisher of every backbone parameter of the expert `state` on `task`."""
        backbone = with_weights(data, state)
        parameters = dict(backbone.named_parameters(remove_duplicate=False))
        for parameter in parameters.values():
            parameter.requires_grad_(True)
        totals = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in parameters.items()}
        generator = torch.Generator().manual_seed(self.seed)
        rows = 0
        for inputs, labels in single_examples(task, self.examples):
            backbone.zero_grad(set_to_none=True)
            outputs = task.head(features(backbone, inputs, task.kind.level))
            log_likelihood(task.kind, outputs, labels, generator).backward()
            for key, parameter in parameters.items():
                if parameter.grad is not None:
                    totals[key] += parameter.grad.detach().float().square()
            rows += 1
        if rows == 0:
            raise ConfigError(f"fisher: task {task.name!r} gave no training rows; the Fisher "
                              "needs at least one.")
        unreached = [k for k, t in totals.items() if not t.any()]
        if unreached:
            self.note(f"{task.name}: {len(unreached)} parameters get no gradient (Fisher 0, "
                      f"so averaged), e.g. {unreached[0]}")
        return {k: t / rows for k, t in totals.items()}


def log_likelihood(kind: TaskKind, outputs: Tensor, labels: Tensor | None,
                   generator: torch.Generator) -> Tensor:
    """``log p(y | x)`` of labels y sampled from the predictive distribution that `outputs`
    define for `kind`, summed over the positions of one example (labelled tokens only, for a
    token-level task with labels)."""
    if isinstance(kind, Classification) or kind.level == "token":
        log_p = outputs.log_softmax(dim=-1)
        flat = log_p.detach().exp().reshape(-1, log_p.shape[-1])
        sampled = torch.multinomial(flat, 1, generator=generator).view(log_p.shape[:-1])
        chosen = log_p.gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
        if labels is not None and labels.shape == chosen.shape:
            chosen = chosen * (labels != IGNORE)
        return chosen.sum()
    if isinstance(kind, MultiLabel):
        sampled = torch.bernoulli(outputs.detach().sigmoid(), generator=generator)
        return -F.binary_cross_entropy_with_logits(outputs, sampled, reduction="sum")
    if isinstance(kind, Regression):
        noise = torch.randn(outputs.shape, generator=generator, dtype=outputs.dtype)
        return -0.5 * ((outputs.detach() + noise) - outputs).square().sum()
    raise ConfigError(
        f"fisher: task kind {type(kind).__name__} has no predictive distribution to sample "
        "from (classification, token classification, multi-label and regression do); use "
        "another merging method for this task.")
