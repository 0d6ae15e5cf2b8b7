"""AdaTT: Adaptive Task-to-Task Fusion Network.

Li, Xiao, Lin, Tang, Li, Roy, Liu, Cao, Raju, Wang, Liu, Zhang, Liu, Hua, Sun, Yang, Zhang,
Deng, Chen, Liang, Li, Feng, "AdaTT: Adaptive Task-to-Task Fusion Network for Multitask
Learning in Recommendations", KDD 2023. Each fusion level has task-specific experts (and
optionally shared experts). Task t's fusion unit mixes *all* experts of the level (every
task's and the shared ones) with a softmax gate conditioned on task t's input, and adds a
residual: a learned linear combination of task t's own experts. The result is task t's
input to the next level. With shared experts, as in PLE, a shared gate over all experts
makes the next level's shared input (not at the last level).

Ownership: every task's experts are read by every task's fusion gate, so all experts are
shared in the gradient sense, even though the paper calls them task-specific. Task t's
gate and residual weights below the last level feed task t's next experts, which every
task reads, so they are shared too. Only task t's gate and residual weights at the last
level are used by task t alone, and only those are task t's parameters.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from polytask.models.sharing._blocks import Experts, SoftmaxGate, check_option, mix
from polytask.models.sharing.base import ARCHITECTURES, SharingArchitecture


class FusionLevel(nn.Module):
    """One AdaTT level: per-task (and shared) experts, per-task fusion gates and residuals."""

    def __init__(
        self,
        in_dim: int,
        width: int,
        task_names: Sequence[str],
        task_experts: int,
        shared_experts: int,
        expert_layers: int,
        dropout: float,
        shared_gate: bool,
    ) -> None:
        super().__init__()
        self.task_names = list(task_names)
        total = task_experts * len(self.task_names) + shared_experts
        self.task_experts = nn.ModuleDict(
            {t: Experts(task_experts, in_dim, width, expert_layers, dropout) for t in task_names}
        )
        self.shared_experts = (
            Experts(shared_experts, in_dim, width, expert_layers, dropout)
            if shared_experts
            else None
        )
        self.gates = nn.ModuleDict({t: SoftmaxGate(in_dim, total) for t in task_names})
        self.residuals = nn.ParameterDict(
            {t: nn.Parameter(torch.full((task_experts,), 1.0 / task_experts)) for t in task_names}
        )
        self.shared_gate = (
            SoftmaxGate(in_dim, total) if shared_gate and shared_experts > 0 else None
        )

    def forward(
        self, shared_input: Tensor, task_inputs: dict[str, Tensor], tasks: Sequence[str]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Fused outputs for `tasks` and the next shared input (`shared_input` itself when
        there are no shared experts). `task_inputs` must hold every task."""
        own = {t: self.task_experts[t](task_inputs[t]) for t in self.task_names}
        experts = [own[t] for t in self.task_names]
        if self.shared_experts is not None:
            experts.append(self.shared_experts(shared_input))
        everything = torch.cat(experts, dim=-2)
        outputs = {
            t: mix(self.gates[t](task_inputs[t]), everything) + mix(self.residuals[t], own[t])
            for t in tasks
        }
        if self.shared_gate is not None:
            shared_input = mix(self.shared_gate(shared_input), everything)
        return shared_input, outputs


@ARCHITECTURES.register(
    "adatt",
    paper="AdaTT: Adaptive Task-to-Task Fusion Network for Multitask Learning in "
    "Recommendations (Li et al. 2023)",
)
class AdaTT(SharingArchitecture):
    """Task-to-task fusion: per-level gates over every task's experts plus a residual.

    Hyperparameters:
      levels: fusion levels (default 2).
      task_experts: experts per task per level (default 2).
      shared_experts: shared experts per level (default 0, the paper's AdaTT-sp; > 0 gives
        the variant with shared experts).
      hidden: width of every expert layer and of the output (default: input_dim).
      expert_layers: Linear-ReLU layers per expert (default 1).
      dropout: dropout after each expert layer (default 0).
    The residual weights start at 1 / task_experts (the mean of the task's own experts).
    See the module docstring for which parameters are shared and which are task t's.
    """

    def __init__(
        self,
        input_dim: int,
        task_names: Sequence[str],
        levels: int = 2,
        task_experts: int = 2,
        shared_experts: int = 0,
        hidden: int | None = None,
        expert_layers: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(input_dim, task_names)
        check_option(levels >= 1, "levels", levels, "use at least 1 level.")
        check_option(task_experts >= 1, "task_experts", task_experts, "use at least 1.")
        check_option(shared_experts >= 0, "shared_experts", shared_experts, "use 0 or more.")
        check_option(expert_layers >= 1, "expert_layers", expert_layers, "use at least 1.")
        self._output_dim = hidden or input_dim
        self.levels = nn.ModuleList(
            FusionLevel(
                input_dim if i == 0 else self._output_dim,
                self._output_dim,
                task_names,
                task_experts,
                shared_experts,
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
        shared = features
        task_inputs = dict.fromkeys(self.task_names, features)
        last = len(self.levels) - 1
        for i, level in enumerate(self.levels):
            # Every task's experts are read at every level, so all tasks go on until the last.
            wanted = tasks if i == last else self.task_names
            shared, task_inputs = level(shared, task_inputs, wanted)
        return task_inputs

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        last = self.levels[-1]
        yield from last.gates[task].parameters()
        yield last.residuals[task]
