"""Progressive Layered Extraction (PLE).

Tang, Liu, Zhao, Gong, "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning
(MTL) Model for Personalized Recommendations", RecSys 2020. Each extraction level has
shared experts and task-specific experts. Task t's gate mixes its own experts with the
shared ones; at every level but the last, a shared gate mixes *all* experts (every task's
and the shared ones) into the input of the next level's shared experts, while task t's
gated output is the input of the next level's task-t experts and gate. One level without
the shared gate is the Customized Gate Control (CGC) model of the same paper (`cgc`).

Ownership, derived from which outputs a parameter can reach:
  - task t's experts at a level with a shared gate are read by that gate, whose output
    feeds every task: they are shared. Only the last level's task-t experts are task t's.
  - task t's gate at level l feeds only task t's path; it stays task t's as long as that
    path meets no shared gate afterwards, i.e. for the last two levels.
So for `levels=1` (CGC) every task-specific expert and gate is task t's; for deeper PLE,
the lower levels' task experts are shared in the gradient sense even though they are
"task-specific" in the paper's vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from polytask.models.sharing._blocks import Experts, SoftmaxGate, check_option, mix
from polytask.models.sharing.base import ARCHITECTURES, SharingArchitecture


class ExtractionLevel(nn.Module):
    """One PLE level: shared and per-task experts, per-task gates, an optional shared gate."""

    def __init__(
        self,
        in_dim: int,
        width: int,
        task_names: Sequence[str],
        shared_experts: int,
        task_experts: int,
        expert_layers: int,
        dropout: float,
        shared_gate: bool,
    ) -> None:
        super().__init__()
        self.task_names = list(task_names)
        self.shared_experts = Experts(shared_experts, in_dim, width, expert_layers, dropout)
        self.task_experts = nn.ModuleDict(
            {t: Experts(task_experts, in_dim, width, expert_layers, dropout) for t in task_names}
        )
        self.task_gates = nn.ModuleDict(
            {t: SoftmaxGate(in_dim, task_experts + shared_experts) for t in task_names}
        )
        all_experts = shared_experts + task_experts * len(self.task_names)
        self.shared_gate = SoftmaxGate(in_dim, all_experts) if shared_gate else None

    def forward(
        self, shared_input: Tensor, task_inputs: dict[str, Tensor], tasks: Sequence[str]
    ) -> tuple[Tensor | None, dict[str, Tensor]]:
        """Outputs for `tasks` and, with a shared gate, the next shared input (which reads
        every task's experts, so `task_inputs` must then hold every task)."""
        shared = self.shared_experts(shared_input)
        needed = self.task_names if self.shared_gate is not None else tasks
        own = {t: self.task_experts[t](task_inputs[t]) for t in needed}
        outputs = {
            t: mix(self.task_gates[t](task_inputs[t]), torch.cat([own[t], shared], dim=-2))
            for t in tasks
        }
        if self.shared_gate is None:
            return None, outputs
        everything = torch.cat([*(own[t] for t in self.task_names), shared], dim=-2)
        return mix(self.shared_gate(shared_input), everything), outputs


@ARCHITECTURES.register(
    "ple",
    paper="Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model "
    "for Personalized Recommendations (Tang et al. 2020)",
)
class PLE(SharingArchitecture):
    """Progressive Layered Extraction: stacked levels of shared and task-specific experts.

    Hyperparameters:
      levels: extraction levels (default 2; 1 is CGC).
      shared_experts: shared experts per level (default 2).
      task_experts: experts per task per level (default 2).
      hidden: width of every expert layer and of the output (default: input_dim).
      expert_layers: Linear-ReLU layers per expert (default 1).
      dropout: dropout after each expert layer (default 0).

    See the module docstring for which parameters are shared and which are task t's.
    """

    def __init__(
        self,
        input_dim: int,
        task_names: Sequence[str],
        levels: int = 2,
        shared_experts: int = 2,
        task_experts: int = 2,
        hidden: int | None = None,
        expert_layers: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(input_dim, task_names)
        check_option(levels >= 1, "levels", levels, "use at least 1 level.")
        check_option(shared_experts >= 1, "shared_experts", shared_experts, "use at least 1.")
        check_option(task_experts >= 1, "task_experts", task_experts, "use at least 1.")
        check_option(expert_layers >= 1, "expert_layers", expert_layers, "use at least 1.")
        self._output_dim = hidden or input_dim
        self.levels = nn.ModuleList(
            ExtractionLevel(
                input_dim if i == 0 else self._output_dim,
                self._output_dim,
                task_names,
                shared_experts,
                task_experts,
                expert_layers,
                dropout,
                shared_gate=i < levels - 1,
            )
            for i in range(levels)
        )

    @property
    def output_dim(self) -> int:
        return self._output_dim

    def forward(self, features: Tensor, tasks: Sequence[str]) -> dict[str, Tensor]:
        shared: Tensor | None = features
        task_inputs = dict.fromkeys(self.task_names, features)
        for i, level in enumerate(self.levels):
            # Below the last level, the next level's shared gate reads every task's experts.
            wanted = tasks if i >= len(self.levels) - 2 else self.task_names
            assert shared is not None  # only the last level has no shared gate
            shared, task_inputs = level(shared, task_inputs, wanted)
        return {t: task_inputs[t] for t in tasks}

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        last = len(self.levels) - 1
        for i, level in enumerate(self.levels):
            if i == last:
                yield from level.task_experts[task].parameters()
            if i >= last - 1:
                yield from level.task_gates[task].parameters()
