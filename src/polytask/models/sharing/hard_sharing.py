"""Hard parameter sharing: every task reads the same representation.

Caruana, "Multitask Learning", Machine Learning 28 (1997). The shared trunk is the
backbone (optionally followed by `layers` shared Linear-ReLU blocks); each task then has
only its own head.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch import Tensor, nn

from polytask.models.sharing.base import ARCHITECTURES, SharingArchitecture


@ARCHITECTURES.register("hard_sharing", paper="Multitask Learning (Caruana 1997)")
class HardSharing(SharingArchitecture):
    """Hard parameter sharing. `hidden`: width of optional extra shared layers;
    `layers`: how many (default 0: the backbone output goes straight to the heads)."""

    def __init__(
        self,
        input_dim: int,
        task_names: Sequence[str],
        hidden: int | None = None,
        layers: int = 0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(input_dim, task_names)
        width = hidden or input_dim
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks += [nn.Linear(input_dim if i == 0 else width, width), nn.ReLU()]
            if dropout:
                blocks.append(nn.Dropout(dropout))
        self.trunk = nn.Sequential(*blocks)
        self._output_dim = width if layers else input_dim

    @property
    def output_dim(self) -> int:
        return self._output_dim

    def forward(self, features: Tensor, tasks: Sequence[str]) -> dict[str, Tensor]:
        shared = self.trunk(features)
        return {t: shared for t in tasks}

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        del task
        return iter(())
