"""Polytropon (`poly`): an inventory of LoRA skills mixed per task by learned routing.

Ponti, Sordoni, Bengio and Reddy, "Combining Parameter-efficient Modules for Task-level
Generalisation" (EACL 2023). Every adapted linear layer holds `skills` LoRA modules
(A_j: d_in x r, B_j: r x d_out) and a routing matrix Z (T x skills) of logits. A sample of
task t uses the skills' average weighted by its task's routing weights w_t:
A_t = Σ_j w_tj A_j, B_t = Σ_j w_tj B_j, and adds (alpha / r) x A_t B_t to the frozen
layer's output. During training w_t is a relaxed-Bernoulli (Gumbel-sigmoid, temperature 1)
sample of sigmoid(Z_t), normalised to sum to one, so each task learns which subset of skills
it uses; at inference it is sigmoid(Z_t) normalised (deterministic).

Trainable parameters, summed over the adapted layers (d_in x d_out each):
    skills x r x (d_in + d_out)  +  T x skills
(with `routing_only: true`, only the routing logits: T x skills per layer).

From PEFT (`peft.tuners.poly`): the router (`PolyRouter`'s forward: the relaxed-Bernoulli
sample in training, the sigmoid at inference, the normalisation; and its uniform(-1e-3, 1e-3)
initialisation), with each task's row of logits kept as its own parameter so that it is
private to its task (filled from that task's loss only). The skill inventory uses PEFT's
tensor layout (A: heads x skills x d_in/heads x r, B: heads x skills x r x d_out/heads),
initialisation (each A like nn.Linear's weight, B zero) and mixing (one einsum per tensor,
one batched matmul per sample), so a PEFT Poly adapter maps to it by renaming:
`poly_lora_A` = `lora_A`, `poly_lora_B` = `lora_B` x alpha (PEFT scales by 1 / r),
`poly_router.default.module_logits` = the stacked `router.task_logits`. What polytask adds:
per-sample routing of a mixed-task batch from the shared routing state, dropout, the
alpha / r scale, merging (ΔW of a task at its inference routing), and the few-shot
adaptation below (shared with `mhr`).

Few-shot adaptation to new tasks (MHR-z, Caccia et al. 2023): `source: RUN_DIR` loads the
skill inventory of a finished source run (same adapter options and backbone) and
`routing_only: true` freezes it, so only the new tasks' routing logits (and the heads) train.
`Poly.adapt_routing_only()` does the same on an adapter in Python.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from polytask.errors import ConfigError
from polytask.models.adapters._sources import read_source
from polytask.models.adapters.base import (
    ADAPTERS,
    AdaptedLinear,
    Adapter,
    RoutingState,
    batched_matmul,
    kaiming_uniform_,
)


def task_router(num_tasks: int, skills: int, heads: int) -> nn.Module:
    """PEFT's Poly router with each task's row of routing logits its own parameter (private
    to the task: another task's loss gives it no gradient), reset like PEFT's."""
    from peft.tuners.poly.router import PolyRouter

    class TaskRowsPolyRouter(PolyRouter):
        """`PolyRouter` whose (T x heads*skills) `module_logits` is the stack of T per-task
        parameters; PEFT's forward (sampling, sigmoid, normalisation) is used as is."""

        def __init__(self) -> None:
            nn.Module.__init__(self)  # PolyRouter's would register one T x K parameter
            self.poly_type, self.n_tasks = "poly", num_tasks
            self.n_skills, self.n_splits = skills, heads
            self.task_logits = nn.ParameterList(
                nn.Parameter(torch.empty(heads * skills)) for _ in range(num_tasks))
            self.reset()

        @property
        def module_logits(self) -> Tensor:  # type: ignore[override]
            return torch.stack(tuple(self.task_logits))

        def reset(self) -> None:
            for logits in self.task_logits:
                nn.init.uniform_(logits, -1e-3, 1e-3)

    return TaskRowsPolyRouter()


class PolyLinear(AdaptedLinear):
    """A frozen linear layer plus a routed mixture of LoRA skills, split into `heads` blocks
    of the input and output features (one block: Poly; several: multi-head routing, MHR)."""

    def __init__(self, base_layer: nn.Linear, routing: RoutingState, dropout: float,
                 num_tasks: int, r: int, skills: int, heads: int, scaling: float,
                 method: str) -> None:
        super().__init__(base_layer, routing, dropout)
        self.r, self.skills, self.heads, self.scaling = r, skills, heads, scaling
        self.method = method
        self.router = task_router(num_tasks, skills, heads)
        d_in, d_out = self.in_features // heads, self.out_features // heads
        # PEFT's layout; each A initialised like nn.Linear's weight (r x d_in), then transposed
        self.lora_A = nn.Parameter(
            kaiming_uniform_(torch.empty(heads, skills, r, d_in)).transpose(-1, -2).contiguous())
        self.lora_B = nn.Parameter(torch.zeros(heads, skills, r, d_out))

    def routing_weights(self, task_ids: Tensor) -> Tensor:
        """Each sample's skill weights (B, heads, skills), rows summing to one: sampled in
        training, deterministic at inference (PEFT's router)."""
        return self.router(task_ids=task_ids, input_ids=None)

    def mixed(self, weights: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample A (B, d_in, r) and B (B, r, d_out) for skill weights (B, heads, skills)."""
        batch = weights.shape[0]
        a = torch.einsum("bqs,qsdr->bqdr", weights, self.lora_A).reshape(
            batch, self.in_features, self.r)
        b = torch.einsum("bqs,qsrd->bqrd", weights, self.lora_B).transpose(1, 2).reshape(
            batch, self.r, self.out_features)
        return a, b

    def delta(self, x: Tensor) -> Tensor:
        task_ids = self.routing.require_task_ids(self.method, x)
        a, b = self.mixed(self.routing_weights(task_ids.to(x.device)))
        return batched_matmul(batched_matmul(x, a.to(x.dtype)), b.to(x.dtype)) * self.scaling

    def delta_weight(self, task: int) -> Tensor:
        """ΔW of task index `task` with its inference (deterministic) routing."""
        was_training = self.router.training
        self.router.eval()
        try:
            weights = self.routing_weights(torch.tensor([task], device=self.lora_A.device))
        finally:
            self.router.train(was_training)
        a, b = self.mixed(weights)
        return (a[0] @ b[0]).T * self.scaling

    def inventory(self) -> list[nn.Parameter]:
        """The skill inventory (shared by every task)."""
        return [self.lora_A, self.lora_B]

    def task_parameters(self, task: int) -> Iterator[nn.Parameter]:
        yield self.router.task_logits[task]


@ADAPTERS.register("poly", paper="Combining Parameter-efficient Modules for Task-level "
                   "Generalisation (Ponti et al., EACL 2023)")
class Poly(Adapter):
    """Polytropon: per layer, an inventory of LoRA skills mixed by per-task learned routing
    (relaxed-Bernoulli in training).

    Options: `skills` (LoRA modules per layer), `source` (a finished run whose skill
    inventory initialises this one), `routing_only` (freeze the inventory: only the routing
    logits train; needs `source`).

    Trainable parameters: Σ over adapted layers of skills·r·(d_in + d_out) + T·skills
    (routing_only: T·skills per layer).
    """

    #: routing heads per layer (1 for Poly; `mhr` sets its own)
    heads: int = 1

    def __init__(self, task_names: Sequence[str], r: int = 8, alpha: float = 16.0,
                 dropout: float = 0.0,
                 target_modules: Sequence[str] | str = ("query", "value"),
                 skills: int = 4, source: str | None = None,
                 routing_only: bool = False) -> None:
        super().__init__(task_names, r, alpha, dropout, target_modules)
        if skills < 1:
            raise ConfigError(f"model.adapter.skills: must be a positive integer, got {skills}")
        if routing_only and source is None:
            raise ConfigError(
                "model.adapter.routing_only: true adapts only the routing of a skill inventory "
                "trained before; set model.adapter.source to the source run's directory")
        self.skills = skills
        self.source = source
        self.routing_only = routing_only

    @classmethod
    def reload_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Without `source` and `routing_only`: a trained model's weights replace both."""
        return {k: v for k, v in options.items() if k not in ("source", "routing_only")}

    def wrap(self, name: str, index: int, layer: nn.Linear) -> nn.Module:
        del index
        for side, features in (("in", layer.in_features), ("out", layer.out_features)):
            if features % self.heads:
                raise ConfigError(
                    f"model.adapter.heads: {self.heads} does not divide the {side}_features "
                    f"({features}) of {name}; pick a divisor of the layer widths")
        return PolyLinear(layer, self.routing, self.dropout, len(self.task_names), self.r,
                          self.skills, self.heads, self.scaling, self.name)

    def after_attach(self, backbone: nn.Module) -> None:
        del backbone
        if self.source is not None:
            self.load_inventory(self.source)
        if self.routing_only:
            self.adapt_routing_only()

    def layers(self) -> Iterator[PolyLinear]:
        for wrapper in self.wrapped.values():
            assert isinstance(wrapper, PolyLinear)
            yield wrapper

    def load_inventory(self, source: str) -> None:
        """Copy the skill inventory (every layer's A and B) of the finished run `source`;
        the routing logits keep their initialisation (the tasks are new)."""
        weights = read_source(source, "model.adapter.source")
        with torch.no_grad():
            for name, layer in zip(self.wrapped, self.layers(), strict=True):
                for attribute in ("lora_A", "lora_B"):
                    tensor = getattr(layer, attribute)
                    tensor.copy_(weights.checked(f"{name}.{attribute}", tuple(tensor.shape),
                                                 "model.adapter.source"))

    def adapt_routing_only(self) -> None:
        """Freeze the skill inventory: only the routing logits train (MHR-z few-shot
        adaptation to new tasks)."""
        for layer in self.layers():
            for parameter in layer.inventory():
                parameter.requires_grad_(False)

    def routing_parameters(self) -> list[nn.Parameter]:
        """Every layer's routing logits (one heads*skills parameter per task)."""
        return [logits for layer in self.layers() for logits in layer.router.task_logits]

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        """Task `task`'s routing logits in every layer (the skills are shared)."""
        index = self.task_index(task)
        for layer in self.layers():
            yield from layer.task_parameters(index)

    @classmethod
    def trainable_count(cls, layers: Mapping[str, tuple[int, int]], num_tasks: int,
                        **options: Any) -> int:
        r = int(options.get("r", 8))
        skills = int(options.get("skills", 4))
        heads = int(options.get("heads", cls.heads))
        routing = num_tasks * heads * skills
        inventory = 0 if options.get("routing_only") else skills * r
        return sum(inventory * (d_in + d_out) + routing for d_in, d_out in layers.values())
