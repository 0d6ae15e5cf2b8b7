"""Cross-stitch networks.

Misra, Shrivastava, Gupta, Hebert, "Cross-stitch Networks for Multi-task Learning", CVPR
2016. Each task has its own column of Linear-ReLU layers; between consecutive layers a
cross-stitch unit replaces task t's activation by a learned linear combination of every
column's activation, h'_t = sum_s alpha[t, s] h_s, so the network learns how much to share
at each depth. The paper initialises alpha with weight 0.9 on the own column and 0.1 on
the other one; with T tasks the 0.1 is spread evenly over the T - 1 others.

Ownership: a column's layers below the last feed every task through the cross-stitch
units, so they are shared (although the paper calls them task t's column). What only task
t uses is its column's last layer and its row of the last cross-stitch unit (alpha[t, :]
of the unit below that layer). The rows of the lower units feed columns that are
stitched again, so they are shared.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from polytask.models.sharing._blocks import check_option, mlp
from polytask.models.sharing.base import ARCHITECTURES, SharingArchitecture


@ARCHITECTURES.register(
    "cross_stitch",
    paper="Cross-stitch Networks for Multi-task Learning (Misra et al. 2016)",
)
class CrossStitch(SharingArchitecture):
    """Per-task columns of Linear-ReLU layers joined by learned cross-stitch units.

    Hyperparameters:
      layers: Linear-ReLU layers per column (default 2); a cross-stitch unit sits between
        each pair of consecutive layers, so there are `layers - 1` units.
      hidden: width of every layer and of the output (default: input_dim).
      self_weight: initial weight of a task's own column in each unit (default 0.9, the
        paper's choice); the rest, 1 - self_weight, is spread over the other columns.
      dropout: dropout after each layer (default 0).
    """

    def __init__(
        self,
        input_dim: int,
        task_names: Sequence[str],
        layers: int = 2,
        hidden: int | None = None,
        self_weight: float = 0.9,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(input_dim, task_names)
        check_option(layers >= 1, "layers", layers, "use at least 1 layer.")
        check_option(0.0 <= self_weight <= 1.0, "self_weight", self_weight, "use [0, 1].")
        width = hidden or input_dim
        self._output_dim = width
        self.columns = nn.ModuleDict(
            {
                t: nn.ModuleList(
                    mlp(input_dim if i == 0 else width, width, 1, dropout) for i in range(layers)
                )
                for t in task_names
            }
        )
        n = len(self.task_names)
        other = (1.0 - self_weight) / (n - 1) if n > 1 else 0.0
        # units[i][t] = alpha[t, :] of the unit after layer i, over columns in task_names order.
        self.units = nn.ModuleList(
            nn.ParameterDict(
                {
                    t: nn.Parameter(
                        torch.tensor([self_weight if s == t else other for s in self.task_names])
                    )
                    for t in task_names
                }
            )
            for _ in range(layers - 1)
        )

    @property
    def output_dim(self) -> int:
        return self._output_dim

    def forward(self, features: Tensor, tasks: Sequence[str]) -> dict[str, Tensor]:
        hidden = dict.fromkeys(self.task_names, features)
        for i, unit in enumerate(self.units):
            stacked = torch.stack([self.columns[t][i](hidden[t]) for t in self.task_names], -1)
            # Every column's next layer is needed below the last unit; at the last, only ours.
            wanted = tasks if i == len(self.units) - 1 else self.task_names
            hidden = {t: stacked @ unit[t] for t in wanted}
        last = len(self.units)
        return {t: self.columns[t][last](hidden[t]) for t in tasks}

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        yield from self.columns[task][-1].parameters()
        if self.units:
            yield self.units[-1][task]
