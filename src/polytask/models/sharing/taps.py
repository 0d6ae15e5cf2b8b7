"""Task Adaptive Parameter Sharing (TAPS).

Wallingford, Li, Achille, Ravichandran, Fowlkes, Bhotika, Soatto, "Task Adaptive Parameter
Sharing for Multi-Task Learning", CVPR 2022. A stack of shared layers; for every layer l
and task t, a weight delta dW[l, t] (starting at zero) and a learned score s[l, t]. Task t
runs layer l with weights W_l + I(s[l, t] >= threshold) * dW[l, t]: the layer is
*specialised* for t when its score passes the threshold, shared otherwise. The indicator
is trained with the straight-through estimator (its gradient is taken as that of
s[l, t] itself), and `auxiliary_loss()` returns sparsity_weight * sum |s[l, t]| over the
tasks of the last forward, which pushes layers back to sharing unless a task's loss pays
for the delta. So which layers each task specialises, and the deltas, are learned
jointly; `specialised_layers()` reports the outcome.

Ownership: W_l and its bias are shared; dW[l, t] and the scores s[:, t] are task t's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytask.models.sharing._blocks import check_option
from polytask.models.sharing.base import ARCHITECTURES, SharingArchitecture


@ARCHITECTURES.register(
    "taps",
    paper="Task Adaptive Parameter Sharing for Multi-Task Learning (Wallingford et al. 2022)",
)
class TAPS(SharingArchitecture):
    """Shared Linear-ReLU layers with per-task weight deltas switched on by learned scores.

    Hyperparameters:
      layers: shared Linear-ReLU layers (default 2).
      hidden: width of every layer and of the output (default: input_dim).
      threshold: a layer is specialised for a task while its score is >= threshold
        (default 0.1).
      score_init: initial score of every (layer, task) (default 1.0, above the threshold:
        every layer starts specialised and the sparsity penalty prunes them).
      sparsity_weight: weight of the L1 penalty on the scores in `auxiliary_loss()`
        (default 0.01); larger shares more layers.
      dropout: dropout after each layer (default 0).
    """

    def __init__(
        self,
        input_dim: int,
        task_names: Sequence[str],
        layers: int = 2,
        hidden: int | None = None,
        threshold: float = 0.1,
        score_init: float = 1.0,
        sparsity_weight: float = 0.01,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(input_dim, task_names)
        check_option(layers >= 1, "layers", layers, "use at least 1 layer.")
        check_option(sparsity_weight >= 0, "sparsity_weight", sparsity_weight, "use >= 0.")
        width = hidden or input_dim
        self._output_dim = width
        self.threshold = threshold
        self.sparsity_weight = sparsity_weight
        self.dropout = nn.Dropout(dropout)
        self.shared = nn.ModuleList(
            nn.Linear(input_dim if i == 0 else width, width) for i in range(layers)
        )
        self.deltas = nn.ModuleList(
            nn.ParameterDict({t: nn.Parameter(torch.zeros_like(layer.weight)) for t in task_names})
            for layer in self.shared
        )
        self.scores = nn.ParameterDict(
            {t: nn.Parameter(torch.full((layers,), float(score_init))) for t in task_names}
        )
        self._aux: Tensor | None = None

    @property
    def output_dim(self) -> int:
        return self._output_dim

    def gates(self, task: str) -> Tensor:
        """I(score >= threshold) per layer, with the straight-through gradient of the score."""
        scores = self.scores[task]
        hard = (scores >= self.threshold).to(scores.dtype)
        return hard + scores - scores.detach()

    def forward(self, features: Tensor, tasks: Sequence[str]) -> dict[str, Tensor]:
        outputs = {}
        for t in tasks:
            gates = self.gates(t)
            h = features
            for i, layer in enumerate(self.shared):
                weight = layer.weight + gates[i] * self.deltas[i][t]
                h = self.dropout(F.relu(F.linear(h, weight, layer.bias)))
            outputs[t] = h
        penalties = [self.scores[t].abs().sum() for t in tasks]
        self._aux = self.sparsity_weight * torch.stack(penalties).sum() if penalties else None
        return outputs

    def auxiliary_loss(self) -> Tensor | None:
        return self._aux

    def specialised_layers(self) -> dict[str, list[int]]:
        """For each task, the indices of the layers it runs with its own delta."""
        return {
            t: [i for i, s in enumerate(self.scores[t].tolist()) if s >= self.threshold]
            for t in self.task_names
        }

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        yield self.scores[task]
        for deltas in self.deltas:
            yield deltas[task]
