"""Pareto Low-Rank Adapters (`palora`): task LoRAs mixed by a preference vector.

Dimitriadis, Frossard and Fleuret, "Pareto Low-Rank Adapters: Efficient Multi-Task Learning
with Preferences" (ICLR 2025). Every adapted linear layer W gets one LoRA per task
(A_t: r x d_in, B_t: d_out x r) on top of the shared weights; for a preference vector λ on
the simplex (λ_t ≥ 0, Σ λ_t = 1) the layer computes
    W x + (alpha / r) Σ_t λ_t B_t A_t x,
so the model is parameterised by λ and one model traces the Pareto front of the tasks'
trade-offs. During training a preference is drawn for every step from a Dirichlet
distribution (`concentration`; 1.0 is uniform on the simplex) by a generator seeded with the
step (a fixed schedule, as the paper's is deterministic; resumed runs repeat it), and the
task losses are weighted by the same preference (times T, so equal preferences weigh like
equal weighting) before the balancer combines them, as in the paper. In your own training
loop, call `adapter.before_step(step, total_steps)` before each step. At inference the
preference is given (`set_preference`, `polytask eval/predict --preference`; uniform by
default) and `polytask eval --pareto K` evaluates K preferences on the simplex.

Every sample uses every task's LoRA (weighted by λ), so no parameter is private to a task:
all are shared parameters for the balancers.

Trainable parameters, summed over the adapted layers (d_in x d_out each):
    T x r x (d_in + d_out)

Not in PEFT: implemented as a module wrapping `nn.Linear` (PEFT's target-module matching).
The mixture is one LoRA of rank T x r whose down-projection output is scaled per sample by
λ, so a mixed batch with per-sample preferences is two matmuls, without a loop over tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from polytask.errors import ConfigError
from polytask.models.adapters.base import (
    ADAPTERS,
    AdaptedLinear,
    Adapter,
    RoutingState,
    for_rows,
    kaiming_uniform_,
)


class PaLoRALinear(AdaptedLinear):
    """A frozen linear layer plus T task LoRAs mixed by each sample's preference."""

    def __init__(self, base_layer: nn.Linear, routing: RoutingState, dropout: float,
                 num_tasks: int, r: int, scaling: float) -> None:
        super().__init__(base_layer, routing, dropout)
        self.num_tasks, self.r, self.scaling = num_tasks, r, scaling
        self.lora_A = nn.Parameter(kaiming_uniform_(torch.empty(num_tasks, r, self.in_features)))
        self.lora_B = nn.Parameter(torch.zeros(num_tasks, self.out_features, r))

    def delta(self, x: Tensor) -> Tensor:
        preference = self.routing.preference
        if preference is None:
            raise ConfigError("adapter 'palora' needs a preference for every sample: call "
                              "adapter.route(task_ids) (MultiTaskModel does this for you)")
        preference = for_rows(preference, x)
        down = x @ self.lora_A.to(x.dtype).reshape(-1, self.in_features).T  # (B, ..., T*r)
        shape = (preference.shape[0],) + (1,) * (x.dim() - 2) + (self.num_tasks, 1)
        down = down.unflatten(-1, (self.num_tasks, self.r)) * preference.to(x.dtype).view(shape)
        up = self.lora_B.to(x.dtype).transpose(1, 2).reshape(-1, self.out_features)
        return (down.flatten(-2) @ up) * self.scaling

    def delta_at(self, preference: Tensor) -> Tensor:
        """ΔW (d_out x d_in) at one preference vector (T,)."""
        weighted = self.lora_B * preference.view(-1, 1, 1).to(self.lora_B.dtype)
        return torch.einsum("tor,tri->oi", weighted, self.lora_A) * self.scaling


def checked_preference(values: Sequence[float] | Tensor, task_names: Sequence[str],
                       field: str = "preference") -> Tensor:
    """`values` as a preference vector on the simplex (normalised to sum to one), after
    checking there is one finite, non-negative entry per task and that they are not all 0."""
    vector = torch.as_tensor(values, dtype=torch.float32).flatten()
    order = ", ".join(task_names)
    if vector.numel() != len(task_names):
        raise ConfigError(f"{field}: {vector.tolist()} has {vector.numel()} value(s), the run "
                          f"has {len(task_names)} tasks ({order}); give one weight per task, "
                          "in that order, e.g. " + ",".join(["0.5"] * len(task_names)))
    if not bool(torch.isfinite(vector).all()) or bool((vector < 0).any()):
        raise ConfigError(f"{field}: {vector.tolist()} has a negative or non-finite weight; "
                          f"give non-negative weights for the tasks {order}")
    if float(vector.sum()) <= 0:
        raise ConfigError(f"{field}: the weights are all zero; give at least one positive "
                          f"weight (tasks: {order})")
    return vector / vector.sum()


@ADAPTERS.register("palora", paper="Pareto Low-Rank Adapters: Efficient Multi-Task Learning "
                   "with Preferences (Dimitriadis et al., ICLR 2025)")
class PaLoRA(Adapter):
    """Preference-conditioned task LoRAs on the shared weights: a preference vector mixes the
    tasks' low-rank adapters; sampled (Dirichlet) in training, given at inference.

    Options: `concentration` (of the Dirichlet distribution the training preferences are
    drawn from; 1.0: uniform on the simplex, larger: closer to equal weights).

    Trainable parameters: Σ over adapted layers of T·r·(d_in + d_out).
    """

    #: every example of a step gets the same preference: tasks reading the same inputs can
    #: share one backbone pass
    task_routed: ClassVar[bool] = False
    preference_conditioned: ClassVar[bool] = True

    def __init__(self, task_names: Sequence[str], r: int = 8, alpha: float = 16.0,
                 dropout: float = 0.0,
                 target_modules: Sequence[str] | str = ("query", "value"),
                 concentration: float = 1.0) -> None:
        super().__init__(task_names, r, alpha, dropout, target_modules)
        if not concentration > 0:
            raise ConfigError(f"model.adapter.concentration: must be positive, got "
                              f"{concentration}")
        self.concentration = float(concentration)
        count = len(self.task_names)
        # not saved: a run's inference preference is chosen when it is used
        self.register_buffer("preference", torch.full((count,), 1.0 / count), persistent=False)
        self.step_preference: Tensor | None = None

    def wrap(self, name: str, index: int, layer: nn.Linear) -> nn.Module:
        del name, index
        return PaLoRALinear(layer, self.routing, self.dropout, len(self.task_names), self.r,
                            self.scaling)

    def set_preference(self, values: Sequence[float] | Tensor,
                       field: str = "preference") -> None:
        """The preference used at inference (one non-negative weight per task, in
        `task_names` order; normalised to sum to one)."""
        self.preference = checked_preference(values, self.task_names, field).to(
            self.preference.device)

    def before_step(self, step: int, total_steps: int) -> bool:
        """Draw the training preference of step `step` (see `preference_of_step`)."""
        del total_steps
        self.step_preference = self.preference_of_step(step)
        return False

    def preference_of_step(self, step: int) -> Tensor:
        """Step `step`'s preference: a Dirichlet(concentration) draw from a generator seeded
        by the step (numpy's), so the schedule is the same in every run and a resumed run
        repeats it, without touching torch's random state."""
        alphas = np.full(len(self.task_names), self.concentration)
        draw = np.random.default_rng(step).dirichlet(alphas)
        return torch.as_tensor(draw, dtype=self.preference.dtype, device=self.preference.device)

    def route(self, task_ids: Tensor | None, preference: Tensor | None = None,
              mask: Tensor | None = None) -> None:
        """Without an explicit B x T `preference`, every example gets the same preference:
        in training the step's (drawn by `before_step`, which the trainer calls before each
        step; step 0's until it is first called), else the inference preference."""
        if preference is None and task_ids is not None:
            preference = self.current_preference().expand(task_ids.shape[0], -1)
        super().route(task_ids, preference, mask)

    def current_preference(self) -> Tensor:
        if not self.training:
            return self.preference
        if self.step_preference is None:
            self.step_preference = self.preference_of_step(0)
        return self.step_preference

    def weigh_losses(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """The paper's scalarisation: in training, task t's loss times T x λ_t of the
        step's preference (T x: equal preferences weigh like equal weighting)."""
        if not self.training:
            return losses
        preference = self.current_preference() * len(self.task_names)
        weights = {t: preference[i] for i, t in enumerate(self.task_names)}
        return {task: loss * weights[task] for task, loss in losses.items()}

    def merged_delta(self, task: str) -> dict[str, Tensor]:
        """ΔW at the inference preference (the same for every task: the mixture is one model);
        `task` is only checked."""
        self.task_index(task)
        return {f"{name}.weight": wrapper.delta_at(self.preference).detach()
                for name, wrapper in self.wrapped.items() if isinstance(wrapper, PaLoRALinear)}

    @classmethod
    def trainable_count(cls, layers: Mapping[str, tuple[int, int]], num_tasks: int,
                        **options: Any) -> int:
        r = int(options.get("r", 8))
        return sum(num_tasks * r * (d_in + d_out) for d_in, d_out in layers.values())
