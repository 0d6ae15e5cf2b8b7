"""Task-aware sparse mixture-of-experts: top-k routing conditioned on a learned task embedding.

Kudugunta, Huang, Bapna, Krikun, Lepikhin, Luong, Firat, "Beyond Distillation: Task-level
Mixture-of-Experts for Efficient Inference", Findings of EMNLP 2021; and Gupta, Mukherjee,
Subudhi, Gonzalez, Jose, Awadallah, Gao, "Sparsely Activated Mixture-of-Experts are Robust
Multi-Task Learners", 2022. A bank of experts is shared by all tasks. A router scores
the experts from the example concatenated with a learned embedding of its task (task-aware
gating, Gupta et al.), or from the task embedding alone (task-level routing, Kudugunta et
al., where every example of a task takes the same experts, so the task's sub-network can
be extracted for inference). Each example is sent to its top-k experts only (their router
probabilities renormalised to sum to 1), so compute stays that of k experts.

Load balancing (the GShard / Switch Transformer auxiliary loss): with f_e the fraction of
routing slots given to expert e and P_e its mean router probability over the examples
(tokens) of the last forward, `auxiliary_loss()` returns balance_weight * E * sum_e f_e P_e,
which is 1 * balance_weight when the load is uniform and grows as it concentrates.

Ownership: experts and router are shared; task t's embedding is task t's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from polytask.models.sharing._blocks import Experts, check_option
from polytask.models.sharing.base import ARCHITECTURES, SharingArchitecture


@ARCHITECTURES.register(
    "task_moe",
    paper="Sparsely Activated Mixture-of-Experts are Robust Multi-Task Learners (Gupta et al. "
    "2022); Beyond Distillation: Task-level Mixture-of-Experts for Efficient Inference "
    "(Kudugunta et al. 2021)",
)
class TaskMoE(SharingArchitecture):
    """Shared experts, top-k routing conditioned on a learned task embedding.

    Hyperparameters:
      num_experts: shared experts (default 8).
      top_k: experts each example is sent to (default 2).
      task_embedding_dim: width of each task's learned embedding (default 16).
      route_on_input: True (default) routes on [example; task embedding]; False routes
        on the task embedding alone (task-level MoE).
      balance_weight: weight of the load-balancing loss returned by `auxiliary_loss()`
        (default 0.01, as in the Switch Transformer).
      hidden: width of every expert layer and of the output (default: input_dim).
      expert_layers: Linear-ReLU layers per expert (default 1).
      dropout: dropout after each expert layer (default 0).
    """

    def __init__(
        self,
        input_dim: int,
        task_names: Sequence[str],
        num_experts: int = 8,
        top_k: int = 2,
        task_embedding_dim: int = 16,
        route_on_input: bool = True,
        balance_weight: float = 0.01,
        hidden: int | None = None,
        expert_layers: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(input_dim, task_names)
        check_option(num_experts >= 1, "num_experts", num_experts, "use at least 1 expert.")
        check_option(
            1 <= top_k <= num_experts, "top_k", top_k, f"use 1 to num_experts ({num_experts})."
        )
        check_option(task_embedding_dim >= 1, "task_embedding_dim", task_embedding_dim, "use >= 1.")
        check_option(balance_weight >= 0, "balance_weight", balance_weight, "use >= 0.")
        check_option(expert_layers >= 1, "expert_layers", expert_layers, "use at least 1.")
        self._output_dim = hidden or input_dim
        self.top_k = top_k
        self.route_on_input = route_on_input
        self.balance_weight = balance_weight
        self.experts = Experts(num_experts, input_dim, self._output_dim, expert_layers, dropout)
        self.task_embeddings = nn.ParameterDict(
            {t: nn.Parameter(torch.randn(task_embedding_dim)) for t in task_names}
        )
        router_in = task_embedding_dim + (input_dim if route_on_input else 0)
        self.router = nn.Linear(router_in, num_experts)
        self._aux: Tensor | None = None

    @property
    def output_dim(self) -> int:
        return self._output_dim

    def route(self, features: Tensor, task: str) -> Tensor:
        """Router probabilities over the experts for each example: (..., num_experts)."""
        embedding = self.task_embeddings[task].expand(*features.shape[:-1], -1)
        router_input = torch.cat([features, embedding], -1) if self.route_on_input else embedding
        return torch.softmax(self.router(router_input), dim=-1)

    def forward(self, features: Tensor, tasks: Sequence[str]) -> dict[str, Tensor]:
        if not tasks:
            self._aux = None
            return {}
        lead = features.shape[:-1]
        flat = features.reshape(-1, features.shape[-1])
        n = flat.shape[0]
        # All requested tasks' examples go through the experts together, each to its top k.
        probs = torch.cat([self.route(flat, t) for t in tasks])  # (tasks * n, E)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        top_p = top_p / top_p.sum(-1, keepdim=True)
        inputs = flat.repeat(len(tasks), 1)
        out = inputs.new_zeros(inputs.shape[0], self._output_dim)
        for e, expert in enumerate(self.experts.experts):
            chosen = top_i == e  # (tasks * n, k); an expert appears at most once per row
            rows = chosen.any(-1).nonzero().squeeze(-1)
            if rows.numel():
                weight = (top_p * chosen).sum(-1)[rows].unsqueeze(-1)
                out = out.index_add(0, rows, weight * expert(inputs[rows]))
        slots = torch.zeros_like(probs).scatter_(1, top_i, 1.0).mean(0) / self.top_k
        self._aux = self.balance_weight * probs.shape[-1] * (slots * probs.mean(0)).sum()
        return {t: out[i * n : (i + 1) * n].reshape(*lead, -1) for i, t in enumerate(tasks)}

    def auxiliary_loss(self) -> Tensor | None:
        return self._aux

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        yield self.task_embeddings[task]
