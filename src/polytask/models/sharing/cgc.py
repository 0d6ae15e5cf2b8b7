"""Customized Gate Control (CGC): single-level Progressive Layered Extraction.

Tang, Liu, Zhao, Gong, "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning
(MTL) Model for Personalized Recommendations", RecSys 2020, section 4.1. Shared experts
plus task-specific experts; task t's gate mixes its own experts and the shared ones. Task
t's experts are read by task t's gate only, so they and the gate are task t's parameters;
the shared experts are shared.
"""

from __future__ import annotations

from collections.abc import Sequence

from polytask.models.sharing.base import ARCHITECTURES
from polytask.models.sharing.ple import PLE


@ARCHITECTURES.register(
    "cgc",
    paper="Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model "
    "for Personalized Recommendations (Tang et al. 2020)",
)
class CGC(PLE):
    """Customized Gate Control: shared and task-specific experts, one gate per task.

    Hyperparameters:
      shared_experts: experts read by every task's gate (default 2).
      task_experts: experts owned by each task (default 2).
      hidden: width of every expert layer and of the output (default: input_dim).
      expert_layers: Linear-ReLU layers per expert (default 1).
      dropout: dropout after each expert layer (default 0).
    """

    def __init__(
        self,
        input_dim: int,
        task_names: Sequence[str],
        shared_experts: int = 2,
        task_experts: int = 2,
        hidden: int | None = None,
        expert_layers: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(
            input_dim,
            task_names,
            levels=1,
            shared_experts=shared_experts,
            task_experts=task_experts,
            hidden=hidden,
            expert_layers=expert_layers,
            dropout=dropout,
        )
