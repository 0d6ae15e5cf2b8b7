"""Learning to Branch: a tree supernet whose nodes learn their parents by Gumbel-softmax.

Guo, Lee, Ulbricht, "Learning to Branch for Multi-Task Learning", ICML 2020. The network
has `depth` levels of nodes (each a Linear-ReLU block); the last level holds one leaf per
task. Every node below the first chooses its parent among the nodes of the level below:
while training, its input is the mix of the candidate parents' outputs with weights drawn
by Gumbel-softmax over learned logits at a temperature, so where the tasks share or split
is learned end to end. `discretize()` then fixes each node's parent to its arg-max, which
turns the supernet into a tree (the branching topology), and later forward passes follow
that tree only (the paper retrains this tree). The fixed topology lives in buffers, so it
is saved in the state_dict and a loaded model reproduces it.

In eval mode before `discretize()`, each node mixes its parents with the noise-free
weights softmax(logits / temperature), so evaluation is deterministic and matches what
training has been averaging over; `paths()` shows the tree `discretize()` would fix.

Ownership: before discretisation, every inner node can feed every leaf, so it is shared;
task t's leaf and its parent logits are task t's. After, a node (with its parent logits)
is task t's when task t's root-to-leaf path is the only path through it; nodes on no path
are left with the shared parameters (they get no gradient).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytask.models.sharing._blocks import check_option, mlp
from polytask.models.sharing.base import ARCHITECTURES, SharingArchitecture


@ARCHITECTURES.register("ltb", paper="Learning to Branch for Multi-Task Learning (Guo et al. 2020)")
class LearningToBranch(SharingArchitecture):
    """Tree supernet: each node picks its parent by Gumbel-softmax; `discretize()` fixes it.

    Hyperparameters:
      depth: levels of nodes, the last being the task leaves (default 3); at least 2.
      width: nodes per level below the leaves, the candidate branches (default: the number
        of tasks, so every task could keep a branch of its own).
      hidden: width of every node's Linear-ReLU block and of the output (default: input_dim).
      temperature: initial Gumbel-softmax temperature (default 1.0), the attribute
        `temperature`.
      final_temperature: temperature reached at the end of the search (default 0.1); in
        the trainer it is annealed geometrically from `temperature`, making the parent
        choices nearly one-hot before they are fixed, as the paper does.
      search_fraction: share of the training steps spent searching the tree (default 0.5);
        in the trainer the tree is then fixed by `discretize()` and the remaining steps
        train it, as the paper retrains the found tree. 1.0: never fix it in training.
      dropout: dropout after each node (default 0).
    """

    def __init__(
        self,
        input_dim: int,
        task_names: Sequence[str],
        depth: int = 3,
        width: int | None = None,
        hidden: int | None = None,
        temperature: float = 1.0,
        final_temperature: float = 0.1,
        search_fraction: float = 0.5,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(input_dim, task_names)
        check_option(depth >= 2, "depth", depth, "use at least 2 levels (one branching).")
        width = width or len(self.task_names)
        check_option(width >= 1, "width", width, "use at least 1 node per level.")
        check_option(temperature > 0, "temperature", temperature, "use a positive value.")
        check_option(0 < final_temperature <= temperature, "final_temperature",
                     final_temperature, "use a value in (0, temperature].")
        check_option(0 < search_fraction <= 1, "search_fraction", search_fraction,
                     "use a share of the steps in (0, 1].")
        self._output_dim = hidden or input_dim
        self.temperature = temperature
        self.initial_temperature = temperature
        self.final_temperature = final_temperature
        self.search_fraction = search_fraction
        self.sizes = [width] * (depth - 1) + [len(self.task_names)]
        self.nodes = nn.ModuleList(
            nn.ModuleList(
                mlp(input_dim if level == 0 else self._output_dim, self._output_dim, 1, dropout)
                for _ in range(size)
            )
            for level, size in enumerate(self.sizes)
        )
        # parent_logits[level - 1][j]: node j of `level` scoring the nodes of `level - 1`.
        self.parent_logits = nn.ModuleList(
            nn.ParameterList(nn.Parameter(torch.zeros(self.sizes[level - 1])) for _ in range(size))
            for level, size in enumerate(self.sizes)
            if level > 0
        )
        # topology[level - 1, j]: the fixed parent of node j of `level` (-1 until discretized).
        self.register_buffer("topology", torch.full((depth - 1, max(self.sizes)), -1))
        self.register_buffer("discretized", torch.tensor(False))

    @property
    def output_dim(self) -> int:
        return self._output_dim

    def _parent(self, level: int, node: int) -> int:
        """The fixed parent, or the arg-max one before discretization."""
        if self.discretized:
            return int(self.topology[level - 1, node])
        return int(self.parent_logits[level - 1][node].argmax())

    def forward(self, features: Tensor, tasks: Sequence[str]) -> dict[str, Tensor]:
        cache: dict[tuple[int, int], Tensor] = {}

        def output(level: int, node: int) -> Tensor:
            if (level, node) not in cache:
                if level == 0:
                    x = features
                elif not self.discretized:
                    logits = self.parent_logits[level - 1][node]
                    weights = (
                        F.gumbel_softmax(logits, tau=self.temperature)
                        if self.training
                        else torch.softmax(logits / self.temperature, dim=-1)
                    )
                    parents = [output(level - 1, p) for p in range(self.sizes[level - 1])]
                    x = torch.stack(parents, dim=-1) @ weights
                else:
                    x = output(level - 1, int(self.topology[level - 1, node]))
                cache[level, node] = self.nodes[level][node](x)
            return cache[level, node]

        leaves = len(self.sizes) - 1
        return {t: output(leaves, self.task_names.index(t)) for t in tasks}

    def before_step(self, step: int, total_steps: int) -> bool:
        """Anneal the temperature during the search; fix the tree when the search ends.

        The trainer calls it at every `on_step_begin` event, through its
        `polytask.train.callbacks.ArchitectureSchedule` callback."""
        search_steps = max(1, round(self.search_fraction * total_steps))
        if self.discretized:
            return False
        if step >= search_steps and self.search_fraction < 1:
            self.discretize()
            return True
        progress = step / search_steps
        ratio = self.final_temperature / self.initial_temperature
        self.temperature = self.initial_temperature * ratio**progress
        return False

    @torch.no_grad()
    def discretize(self) -> None:
        """Fix every node's parent to its arg-max; the supernet becomes a tree."""
        for level in range(1, len(self.sizes)):
            for node in range(self.sizes[level]):
                self.topology[level - 1, node] = self._parent(level, node)
        self.discretized.fill_(True)

    def paths(self) -> dict[str, list[int]]:
        """Each task's root-to-leaf path: its node index at every level, root level first
        (the fixed tree, or the arg-max one before `discretize()`)."""
        result = {}
        for leaf, task in enumerate(self.task_names):
            path = [leaf]
            for level in range(len(self.sizes) - 1, 0, -1):
                path.append(self._parent(level, path[-1]))
            result[task] = path[::-1]
        return result

    def _owners(self, level: int, node: int) -> set[str]:
        """The tasks whose output can depend on this node."""
        if self.discretized:
            return {t for t, path in self.paths().items() if path[level] == node}
        if level == len(self.sizes) - 1:
            return {self.task_names[node]}
        return set(self.task_names)

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        for level, size in enumerate(self.sizes):
            for node in range(size):
                if self._owners(level, node) == {task}:
                    yield from self.nodes[level][node].parameters()
                    if level > 0:
                        yield self.parent_logits[level - 1][node]
