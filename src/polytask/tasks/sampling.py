"""Task samplers: which task(s) feed each training step.

A sampler sees the task sizes (training rows) and the step number and returns the tasks
of the step. Random choices come from its own `torch.Generator`, whose state is saved in
checkpoints so a resumed run draws the same tasks. Adding a sampler is one small class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from polytask.registry import Registry

SAMPLERS: Registry[type[Sampler]] = Registry("sampler")


class Sampler(ABC):
    """Chooses the tasks of each step."""

    #: True when every step feeds every task (what gradient balancers need).
    feeds_all_tasks: ClassVar[bool] = False

    def __init__(self, sizes: Mapping[str, int], total_steps: int, seed: int) -> None:
        self.names = list(sizes)
        self.sizes = torch.tensor([float(sizes[n]) for n in self.names])
        self.total_steps = max(total_steps, 1)
        self.generator = torch.Generator().manual_seed(seed)

    @abstractmethod
    def tasks_for_step(self, step: int) -> list[str]:
        """The tasks whose batches make up step `step` (0-based)."""

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class _OneTaskByProbability(Sampler):
    """Draws one task per step from a categorical distribution over tasks."""

    @abstractmethod
    def probabilities(self, step: int) -> torch.Tensor:
        """Unnormalised task probabilities at `step`, in `self.names` order."""

    def tasks_for_step(self, step: int) -> list[str]:
        p = self.probabilities(step)
        index = int(torch.multinomial(p / p.sum(), 1, generator=self.generator))
        return [self.names[index]]


@SAMPLERS.register("all", paper="Joint training on every task each step (Caruana 1997)")
class AllTasks(Sampler):
    """Every task in every step: needed by gradient balancers and per-step weightings."""

    feeds_all_tasks = True

    def tasks_for_step(self, step: int) -> list[str]:
        return list(self.names)


@SAMPLERS.register(
    "proportional", paper="Multi-Task Deep Neural Networks for NLU (Liu et al. 2019)"
)
class Proportional(_OneTaskByProbability):
    """One task per step, chosen with probability proportional to its training size."""

    def probabilities(self, step: int) -> torch.Tensor:
        return self.sizes


@SAMPLERS.register("uniform", paper="Uniform task sampling (e.g. Sanh et al. 2019, HMTL)")
class Uniform(_OneTaskByProbability):
    """One task per step, every task equally likely whatever its size."""

    def probabilities(self, step: int) -> torch.Tensor:
        return torch.ones_like(self.sizes)


@SAMPLERS.register(
    "temperature",
    paper="Exploring the Limits of Transfer Learning with a Unified Text-to-Text "
    "Transformer (Raffel et al. 2020); Massively Multilingual NMT (Arivazhagan et al. 2019)",
)
class Temperature(_OneTaskByProbability):
    """One task per step with probability ∝ size^(1/T): T=1 is proportional, large T
    approaches uniform. Small tasks cycle through reshuffled epochs as needed."""

    def __init__(
        self, sizes: Mapping[str, int], total_steps: int, seed: int, temperature: float = 2.0
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"sampler.temperature must be > 0, got {temperature}")
        super().__init__(sizes, total_steps, seed)
        self.temperature = temperature

    def probabilities(self, step: int) -> torch.Tensor:
        return self.sizes ** (1.0 / self.temperature)


@SAMPLERS.register(
    "annealed",
    paper="BERT and PALs: Projected Attention Layers for Efficient Adaptation in "
    "Multi-Task Learning (Stickland & Murray 2019)",
)
class Annealed(_OneTaskByProbability):
    """Stickland & Murray's annealed sampling: probability ∝ size^α with
    α = 1 - decay·(step / (total_steps - 1)), moving from proportional (α=1) towards
    uniform as training goes on (the paper uses decay 0.8)."""

    def __init__(
        self, sizes: Mapping[str, int], total_steps: int, seed: int, decay: float = 0.8
    ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"sampler.decay must be in [0, 1], got {decay}")
        super().__init__(sizes, total_steps, seed)
        self.decay = decay

    def probabilities(self, step: int) -> torch.Tensor:
        progress = step / max(self.total_steps - 1, 1)
        return self.sizes ** (1.0 - self.decay * progress)


@SAMPLERS.register("round_robin", paper="Round-robin task scheduling (e.g. jiant, MT-DNN)")
class RoundRobin(Sampler):
    """One task per step, in turn: step s feeds task s mod T."""

    def tasks_for_step(self, step: int) -> list[str]:
        return [self.names[step % len(self.names)]]
