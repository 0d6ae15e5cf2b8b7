"""AdaMerging: task arithmetic whose coefficients are learned by entropy minimisation.

Yang et al. 2024, "AdaMerging: Adaptive Model Merging for Multi-Task Learning" (ICLR).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from polytask.errors import ConfigError
from polytask.merge._data import task_of, with_weights
from polytask.merge._unlabelled import (
    device_of,
    endless,
    frozen,
    masked_mean,
    on_device,
    token_mask,
)
from polytask.merge.base import MERGERS, MergeData, Merger, MergeTask, StateDict
from polytask.models.inputs import Encoded
from polytask.tasks.kinds import Classification, MultiLabel, TaskKind, TokenClassification

Granularity = Literal["task", "layer"]


def prediction_entropy(kind: TaskKind, outputs: Tensor, inputs: Encoded) -> Tensor | None:
    """Mean Shannon entropy (nats) of the predictions in `outputs` (head outputs), or None
    for a kind whose outputs are not a distribution (regression).

    Single-label and token classification: the softmax distribution over the last dimension
    (padding tokens excluded). Multi-label: the mean binary entropy of the labels' sigmoids."""
    if isinstance(kind, Classification | TokenClassification):
        log_p = outputs.log_softmax(dim=-1)
        per_row = -(log_p.exp() * log_p).sum(dim=-1)
    elif isinstance(kind, MultiLabel):
        p = outputs.sigmoid()
        log_p, log_q = nn.functional.logsigmoid(outputs), nn.functional.logsigmoid(-outputs)
        per_row = -(p * log_p + (1 - p) * log_q).mean(dim=-1)
    else:
        return None
    return masked_mean(per_row, token_mask(inputs, outputs))


@MERGERS.register("adamerging", paper="AdaMerging: Adaptive Model Merging for Multi-Task "
                  "Learning (Yang et al. 2024)")
class AdaMerging(Merger):
    """``base + Σ_k λ_k τ_k`` with coefficients λ learned on unlabelled inputs: they minimise
    the Shannon entropy of each task's predictions (its expert head on the merged backbone's
    features), summed over the tasks, with Adam.

    - ``granularity: task``: one λ per task; ``layer``: one λ per task per parameter tensor
      (each entry of the state dict, as the authors' code does).
    - λ starts at `init` (the paper: 0.3) and is clipped to [0, 1] (as in the authors' code).
    - The merged weights are a differentiable function of λ (`torch.func.functional_call` on
      one backbone module): no model copy per step.
    - Inputs: the unlabelled rows of `MergeData.unlabelled_split` (validation by default; the
      paper uses test inputs, which is allowed and recorded in `report()`).
    - Entropy applies to classification, token classification (real tokens only) and
      multi-label tasks; a regression task has no predictive distribution, so its term is
      skipped: its task vector is still merged, with its λ kept at `init` (not learned from
      the other tasks' entropy), and `report()` says so. With no task to score, a
      `ConfigError`.
    - Non-floating tensors (integer buffers) are copied from the base.

    Each step uses one batch of every scored task. `coefficients` holds the final λ per task
    (and per parameter for ``layer``); `report()` lists them (summarised per task for
    ``layer``), with the mean entropy of the first and the last step.

    Grid: granularity ∈ {task, layer} (the paper's two variants)."""

    needs_data = True
    unlabelled_inputs = True
    grid: ClassVar[dict[str, list[Any]]] = {"granularity": ["task", "layer"]}

    def __init__(self, granularity: Granularity = "layer", init: float = 0.3, lr: float = 1e-3,
                 steps: int = 500) -> None:
        super().__init__()
        if granularity not in ("task", "layer"):
            raise ConfigError(f"adamerging: granularity={granularity!r} is not 'task' or "
                              "'layer' (one coefficient per task, or per task and layer).")
        if not 0.0 <= init <= 1.0:
            raise ConfigError(f"adamerging: init={init!r} is outside [0, 1], where the "
                              "coefficients are kept; the paper starts at 0.3.")
        if lr <= 0 or steps < 0:
            raise ConfigError(f"adamerging: lr={lr!r} must be > 0 and steps={steps!r} >= 0.")
        self.granularity: Granularity = granularity
        self.init = init
        self.lr = lr
        self.steps = steps
        #: the learned λ: task -> {parameter name (or "*" for task-wise) -> λ}
        self.coefficients: dict[str, dict[str, float]] = {}
        self._entropies: list[float] = []  # mean entropy per task at each step

    def _merge(self, base: StateDict, experts: Mapping[str, StateDict],
               data: MergeData | None) -> StateDict:
        assert data is not None  # merge() checked
        tasks = list(experts)
        scored = self._scored_tasks(data, tasks)
        module = with_weights(data, base)
        device = device_of(module)
        names = [name for name, tensor in base.items() if tensor.is_floating_point()]
        base_f = {name: base[name].float().to(device) for name in names}
        vectors = {name: torch.stack([experts[t][name].float().to(device) - base_f[name]
                                      for t in tasks]) for name in names}
        rows = 1 if self.granularity == "task" else len(names)
        raw = nn.Parameter(torch.full((rows, len(tasks)), self.init, device=device))

        def merged(lambdas: Tensor) -> StateDict:
            return {name: base_f[name] + torch.tensordot(
                lambdas[0 if rows == 1 else i], vectors[name], dims=1)
                for i, name in enumerate(names)}

        kept = torch.tensor([t not in scored for t in tasks], device=device)
        with frozen(module, *(data.tasks[t].head for t in scored)):
            self._fit(raw, kept, merged, module, [data.tasks[t] for t in scored])
        lambdas = raw.detach().clamp(0.0, 1.0)
        self._record(lambdas, tasks, names, data.unlabelled_split)
        weights = merged(lambdas)
        return {name: weights[name].to(tensor.dtype).cpu() if name in weights
                else tensor.clone() for name, tensor in base.items()}

    def _scored_tasks(self, data: MergeData, tasks: list[str]) -> list[str]:
        """The tasks whose kind has a predictive distribution (noted: the others)."""
        scored = []
        for name in tasks:
            task = task_of(data, name, self.name)
            if isinstance(task.kind, Classification | TokenClassification | MultiLabel):
                scored.append(name)
            else:
                self.note(f"task {name!r} ({type(task.kind).__name__}): no entropy term (its "
                          f"outputs are not a distribution); its λ is kept at {self.init}")
        if not scored:
            raise ConfigError(
                "adamerging: no task has predictions whose entropy can be minimised (it needs "
                "a classification, token classification or multilabel task); use "
                "task_arithmetic with a scale chosen on validation instead.")
        return scored

    def _fit(self, raw: nn.Parameter, kept: Tensor, merged: Callable[[Tensor], StateDict],
             module: nn.Module, tasks: list[MergeTask]) -> None:
        """`steps` Adam steps on λ, each on one batch of every scored task; the columns of
        `kept` (unscored tasks) get no gradient, so Adam leaves them at `init`."""
        device = raw.device
        takes_level = "level" in inspect.signature(module.forward).parameters
        streams = [endless(task, self.name) for task in tasks]
        optimizer = torch.optim.Adam([raw], lr=self.lr)
        self._entropies = []
        for _ in range(self.steps):
            weights = merged(raw.clamp(0.0, 1.0))
            loss = torch.zeros((), device=device)
            for task, stream in zip(tasks, streams, strict=True):
                inputs = on_device(next(stream), device)
                args = (inputs, task.kind.level) if takes_level else (inputs,)
                outputs = task.head(functional_call(module, weights, args))
                entropy = prediction_entropy(task.kind, outputs, inputs)
                assert entropy is not None  # only scored tasks reach here
                loss = loss + entropy
            optimizer.zero_grad()
            loss.backward()
            assert raw.grad is not None
            raw.grad[:, kept] = 0.0
            optimizer.step()
            self._entropies.append(float(loss.detach()) / len(tasks))

    def _record(self, lambdas: Tensor, tasks: list[str], names: list[str], split: str) -> None:
        """Keep the final λ in `coefficients` and note them with the inputs' split."""
        where = f"unlabelled inputs of the {split!r} split"
        if split == "test":
            where += " (test inputs, as in the paper)"
        self.note(f"entropy minimised on {where}, {self.steps} steps")
        if self._entropies:
            self.note(f"mean entropy per task: first step {self._entropies[0]:.4f}, last step "
                      f"{self._entropies[-1]:.4f}")
        keys = ["*"] if self.granularity == "task" else names
        self.coefficients = {t: {key: float(lambdas[i, k]) for i, key in enumerate(keys)}
                             for k, t in enumerate(tasks)}
        for t in tasks:
            values = torch.tensor(list(self.coefficients[t].values()))
            if self.granularity == "task":
                self.note(f"λ[{t}] = {float(values[0]):.4f}")
            else:
                self.note(f"λ[{t}] over {len(values)} layers: min {float(values.min()):.4f}, "
                          f"mean {float(values.mean()):.4f}, max {float(values.max()):.4f}")
