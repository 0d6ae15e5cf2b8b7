"""RegMean: merge each linear layer in closed form from its inputs' Gram matrices."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from polytask.errors import ConfigError
from polytask.merge import functional
from polytask.merge._data import averaged, features, limited_batches, task_of, with_weights
from polytask.merge.base import MERGERS, MergeData, Merger, MergeTask, StateDict


@MERGERS.register("regmean", paper="Dataless Knowledge Fusion by Merging Weights of Language "
                  "Models (Jin et al. 2023)")
class RegMean(Merger):
    """The weight W (out × in) of every `nn.Linear` of the backbone is merged as
    ``Wᵀ = (Σ_i G̃_i)⁻¹ Σ_i G̃_i W_iᵀ``, the minimiser of ``Σ_i ‖X_i Wᵀ − X_i W_iᵀ‖²``, where
    ``G_i = X_iᵀ X_i / rows`` is the Gram matrix of the layer's inputs in expert i on at most
    `examples` training rows of its task and ``G̃_i = α G_i + (1 − α) diag(G_i)``.

    The Grams are collected with forward hooks on each expert's `nn.Linear` modules. For
    token inputs, padded positions are left out (a hook input whose leading dimensions match
    the batch's `attention_mask` keeps the unmasked positions only). Each Gram is divided by
    its row count, so every task counts equally. `ridge` (relative to the mean diagonal entry
    of Σ_i G̃_i) is added to each G̃_i's diagonal: it leaves a lone expert unchanged and makes
    input directions no row reaches fall back to the average. Fallbacks, listed by
    `report()`: biases, embeddings, norms and every other non-`nn.Linear` parameter are
    averaged (as in the paper), and so is a linear layer that no input reached.

    Grid: alpha ∈ {0.1, 0.5, 0.9} (the paper searches α in [0, 1] on validation)."""

    needs_data: ClassVar[bool] = True
    grid: ClassVar[dict[str, list[Any]]] = {"alpha": [0.1, 0.5, 0.9]}

    def __init__(self, alpha: float = 0.9, examples: int = 1000, ridge: float = 1e-6) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"regmean: alpha={alpha!r} is outside [0, 1]; it scales the Gram "
                              "matrices' off-diagonal entries, e.g. 0.9.")
        if examples < 1:
            raise ConfigError(f"regmean: examples={examples!r}; use at least 1 row per task.")
        self.alpha = alpha
        self.examples = examples
        self.ridge = ridge

    def _merge(self, base: StateDict, experts: Mapping[str, StateDict],
               data: MergeData | None) -> StateDict:
        assert data is not None
        grams = {name: self.grams(data, task_of(data, name, "regmean"), state)
                 for name, state in experts.items()}
        linear = {key for key in base if all(key in g for g in grams.values())}
        merged: StateDict = {}
        unreached = []
        for key, tensor in base.items():
            if key in linear and all(g[key].diagonal().any() for g in grams.values()):
                merged[key] = self._solve(key, experts, grams).to(tensor.dtype)
            else:
                unreached += [key] if key in linear else []
                merged[key] = averaged(tensor, experts, key)
        self._report_fallbacks(base, linear, unreached)
        return merged

    def _solve(self, key: str, experts: Mapping[str, StateDict],
               grams: Mapping[str, Mapping[str, Tensor]]) -> Tensor:
        layer = [grams[name][key] for name in experts]
        mean_diagonal = float(sum(g.diagonal().mean() for g in layer)) / len(layer)
        return functional.regmean([experts[name][key] for name in experts], layer, self.alpha,
                                  ridge=self.ridge * mean_diagonal)

    def _report_fallbacks(self, base: StateDict, linear: set[str], unreached: list[str]
                          ) -> None:
        others = [key for key in base if key not in linear]
        if others:
            self.note(f"{len(others)} tensors averaged (RegMean merges nn.Linear weights only: "
                      f"biases, embeddings, norms...), e.g. {', '.join(others[:3])}")
        if unreached:
            self.note(f"{len(unreached)} nn.Linear weights averaged (no input reached them), "
                      f"e.g. {unreached[0]}")

    def grams(self, data: MergeData, task: MergeTask, state: StateDict) -> dict[str, Tensor]:
        """The Gram matrix of the inputs of every `nn.Linear` of the expert `state` on `task`,
        keyed by the layer's weight name (float64, divided by the rows seen)."""
        backbone = with_weights(data, state)
        mask: list[Tensor | None] = [None]

        def hook(key: str) -> Any:
            def collect(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
                x = _unpadded(args[0].detach(), mask[0]).to(torch.float64)
                sums[key] += x.T @ x
                rows[key] += x.shape[0]
            return collect

        layers = {f"{name}.weight": module for name, module in backbone.named_modules()
                  if isinstance(module, nn.Linear) and f"{name}.weight" in state}
        sums = {key: torch.zeros(m.in_features, m.in_features, dtype=torch.float64)
                for key, m in layers.items()}
        rows = dict.fromkeys(layers, 0)
        handles = [module.register_forward_hook(hook(key)) for key, module in layers.items()]
        try:
            with torch.no_grad():
                for inputs, _ in limited_batches(task, self.examples):
                    mask[0] = inputs.get("attention_mask")
                    features(backbone, inputs, task.kind.level)
        finally:
            for handle in handles:
                handle.remove()
        return {key: total / max(rows[key], 1) for key, total in sums.items()}


def _unpadded(x: Tensor, attention_mask: Tensor | None) -> Tensor:
    """The layer input as rows (…, in) -> (rows, in), without padded token positions."""
    if attention_mask is not None and x.dim() >= 3 and x.shape[:2] == attention_mask.shape:
        return x[attention_mask.bool()]
    return x.reshape(-1, x.shape[-1])
