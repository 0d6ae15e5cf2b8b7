"""The sharing-architecture interface: what sits between the backbone and the task heads.

An architecture takes the backbone's features (B x D for sentence-level tasks, or
B x L x D for token-level tasks; it acts on the last dimension) and returns one
representation per task. It declares which of its parameters are shared by all tasks and
which belong to one task, so balancers can treat them differently, and it may add an
auxiliary loss (for example a mixture-of-experts load-balancing term).

Registering: `@ARCHITECTURES.register("mmoe", paper="...")` on a subclass whose
constructor is `(input_dim, task_names, **hyperparameters)`; the config's
`model.architecture_options` are passed as the hyperparameters.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import ClassVar

from torch import Tensor, nn

from polytask.registry import Registry

ARCHITECTURES: Registry[type[SharingArchitecture]] = Registry("architecture")


class SharingArchitecture(nn.Module, ABC):
    """Maps shared features to one representation per task."""

    #: The architecture reads a dense backbone's stage maps (`StagedFeatures`, e.g. MTAN over
    #: SegNet); every other architecture gets the backbone's final map only.
    reads_stages: ClassVar[bool] = False

    def __init__(self, input_dim: int, task_names: Sequence[str]) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.task_names = list(task_names)

    @property
    @abstractmethod
    def output_dim(self) -> int:
        """Width of each task's representation (the input width of its head)."""

    @abstractmethod
    def forward(self, features: Tensor, tasks: Sequence[str]) -> dict[str, Tensor]:
        """One representation per requested task (only those in `tasks` are computed)."""

    @abstractmethod
    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        """The parameters that only `task` uses."""

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters used by more than one task: all those not owned by a single task."""
        private = {id(p) for t in self.task_names for p in self.task_parameters(t)}
        return (p for p in self.parameters() if id(p) not in private)

    def before_step(self, step: int, total_steps: int) -> bool:
        """Called by the trainer before optimizer step `step` (0-based) of `total_steps`, so
        an architecture can follow a schedule (e.g. anneal a temperature, end a search
        phase). Returns True when its shared/task-specific parameter split changed, so the
        trainer re-reads it. Must depend only on `step` (and saved state) for exact resume."""
        del step, total_steps
        return False

    def auxiliary_loss(self) -> Tensor | None:
        """An extra loss from the last forward (e.g. load balancing), or None."""
        return None
