"""Multi-gate Mixture-of-Experts (MMoE).

Ma, Zhao, Yi, Chen, Hong, Chi, "Modeling Task Relationships in Multi-task Learning with
Multi-gate Mixture-of-Experts", KDD 2018. A bank of experts is shared by all tasks; each
task has its own softmax gate, conditioned on the input, that mixes the experts' outputs
into that task's representation. The paper's per-task towers are the task heads here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch import Tensor, nn

from polytask.models.sharing._blocks import Experts, SoftmaxGate, check_option, mix
from polytask.models.sharing.base import ARCHITECTURES, SharingArchitecture


@ARCHITECTURES.register(
    "mmoe",
    paper="Modeling Task Relationships in Multi-task Learning with Multi-gate "
    "Mixture-of-Experts (Ma et al. 2018)",
)
class MMoE(SharingArchitecture):
    """Shared experts mixed by one input-conditioned softmax gate per task.

    Hyperparameters:
      num_experts: how many shared experts (default 8, as in the paper's experiments).
      hidden: width of each expert's layers and of the output (default: input_dim).
      expert_layers: Linear-ReLU layers per expert (default 1).
      dropout: dropout after each expert layer (default 0).

    Ownership: the experts are read by every gate, so they are shared; task t's gate is
    used by task t only, so it is task t's.
    """

    def __init__(
        self,
        input_dim: int,
        task_names: Sequence[str],
        num_experts: int = 8,
        hidden: int | None = None,
        expert_layers: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(input_dim, task_names)
        check_option(num_experts >= 1, "num_experts", num_experts, "use at least 1 expert.")
        check_option(expert_layers >= 1, "expert_layers", expert_layers, "use at least 1.")
        self._output_dim = hidden or input_dim
        self.experts = Experts(num_experts, input_dim, self._output_dim, expert_layers, dropout)
        self.gates = nn.ModuleDict({t: SoftmaxGate(input_dim, num_experts) for t in task_names})

    @property
    def output_dim(self) -> int:
        return self._output_dim

    def forward(self, features: Tensor, tasks: Sequence[str]) -> dict[str, Tensor]:
        expert_outputs = self.experts(features)
        return {t: mix(self.gates[t](features), expert_outputs) for t in tasks}

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        return self.gates[task].parameters()
