"""DSelect-k: a differentiable gate that selects exactly k experts, one per task.

Hazimeh, Zhao, Chowdhery, Sathiamoorthy, Chen, Mazumder, Hong, Chi, "DSelect-k:
Differentiable Selection in the Mixture of Experts with Applications to Multi-Task
Learning", NeurIPS 2021. The experts are shared (multi-gate MoE, as in MMoE); each task's
gate is a DSelect-k gate:
  - k single-expert selectors. Selector i holds m = ceil(log2 n) logits z_i; the binary
    code of expert j is relaxed with the smooth-step function S (exactly 0 below
    -gamma/2, exactly 1 above gamma/2, a cubic in between), and the selector's weight on
    expert j is prod_b (S(z_ib) if bit b of j is 1 else 1 - S(z_ib)).
  - the k selectors are mixed by softmax(w): expert weights = sum_i softmax(w)_i r(z_i).
Once every z_ib has left the cubic region the selectors are one-hot, so at most k expert
weights are non-zero, exactly, and gradients through the gate are still defined. (At
most: two selectors may settle on the same expert, leaving fewer than k.) An
entropy regulariser on each selector's distribution pushes them there during training.
When n is not a power of 2 some codes name no expert; as in the authors' code, the term
1 / (selector weight on real experts) keeps every selector on a real expert.

Both regularisers come back from `auxiliary_loss()` for the last forward, already
weighted, to be added to the training loss.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from polytask.models.sharing._blocks import Experts, check_option, mix
from polytask.models.sharing.base import ARCHITECTURES, SharingArchitecture


def smooth_step(x: Tensor, gamma: float) -> Tensor:
    """0 for x <= -gamma/2, 1 for x >= gamma/2, and a cubic joining them smoothly."""
    cubic = -2.0 / gamma**3 * x**3 + 1.5 / gamma * x + 0.5
    return torch.where(x <= -gamma / 2, 0.0, torch.where(x >= gamma / 2, 1.0, cubic))


class DSelectGate(nn.Module):
    """One task's DSelect-k gate: static (task-only) or conditioned on each example."""

    def __init__(self, num_experts: int, k: int, gamma: float, in_dim: int | None) -> None:
        super().__init__()
        self.k = k
        self.gamma = gamma
        bits = math.ceil(math.log2(num_experts))
        self.bits = bits
        codes = [[(j >> (bits - 1 - b)) & 1 for b in range(bits)] for j in range(num_experts)]
        self.register_buffer("codes", torch.tensor(codes, dtype=torch.bool), persistent=False)
        self.z: nn.Parameter | nn.Linear
        self.w: nn.Parameter | nn.Linear
        if in_dim is None:
            self.z = nn.Parameter(torch.empty(k, bits).uniform_(-gamma / 100, gamma / 100))
            self.w = nn.Parameter(torch.empty(k).uniform_(-0.05, 0.05))
        else:
            self.z = nn.Linear(in_dim, k * bits)
            self.w = nn.Linear(in_dim, k)
            for p in (*self.z.parameters(), *self.w.parameters()):
                nn.init.uniform_(p, -gamma / 100, gamma / 100)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Expert weights (..., n), selector distributions (..., k, n); (n,), (k, n) if static."""
        if isinstance(self.z, nn.Linear) and isinstance(self.w, nn.Linear):
            z = self.z(x).unflatten(-1, (self.k, self.bits))
            w = self.w(x)
        else:
            z, w = self.z, self.w
        s = smooth_step(z, self.gamma).unsqueeze(-2)  # (..., k, 1, bits)
        selectors = torch.where(self.codes, s, 1 - s).prod(dim=-1)  # (..., k, n)
        weights = (torch.softmax(w, dim=-1).unsqueeze(-1) * selectors).sum(dim=-2)
        return weights, selectors


@ARCHITECTURES.register(
    "dselect_k",
    paper="DSelect-k: Differentiable Selection in the Mixture of Experts with Applications "
    "to Multi-Task Learning (Hazimeh et al. 2021)",
)
class DSelectK(SharingArchitecture):
    """Shared experts, one DSelect-k gate per task choosing k of them.

    Hyperparameters:
      num_experts: shared experts (default 8); at least 2.
      k: experts each task's gate may use, the number of selectors (default 2).
      gamma: width of the smooth-step's cubic region (default 1.0); logits beyond
        +-gamma/2 give exact 0/1.
      per_example: False (default) gives a static, task-only gate: one choice of k
        experts per task, which saturates (becomes exactly sparse) within a few hundred
        steps. True conditions each gate on the input, as MMoE's gates are; then every
        example's selectors must saturate, which takes much longer training or a larger
        entropy_weight.
      entropy_weight: weight of the selectors' entropy in `auxiliary_loss()` (default
        0.1); 0 leaves saturation to the task loss alone.
      hidden: width of every expert layer and of the output (default: input_dim).
      expert_layers: Linear-ReLU layers per expert (default 1).
      dropout: dropout after each expert layer (default 0).

    Ownership: experts are shared; task t's gate is task t's.
    """

    def __init__(
        self,
        input_dim: int,
        task_names: Sequence[str],
        num_experts: int = 8,
        k: int = 2,
        gamma: float = 1.0,
        per_example: bool = False,
        entropy_weight: float = 0.1,
        hidden: int | None = None,
        expert_layers: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(input_dim, task_names)
        check_option(num_experts >= 2, "num_experts", num_experts, "use at least 2 experts.")
        check_option(1 <= k <= num_experts, "k", k, f"use 1 to num_experts ({num_experts}).")
        check_option(gamma > 0, "gamma", gamma, "use a positive width, e.g. 1.0.")
        check_option(entropy_weight >= 0, "entropy_weight", entropy_weight, "use >= 0.")
        check_option(expert_layers >= 1, "expert_layers", expert_layers, "use at least 1.")
        self._output_dim = hidden or input_dim
        self.entropy_weight = entropy_weight
        self.power_of_two = num_experts & (num_experts - 1) == 0
        self.experts = Experts(num_experts, input_dim, self._output_dim, expert_layers, dropout)
        gate_input = input_dim if per_example else None
        self.gates = nn.ModuleDict(
            {t: DSelectGate(num_experts, k, gamma, gate_input) for t in task_names}
        )
        self._aux: Tensor | None = None

    @property
    def output_dim(self) -> int:
        return self._output_dim

    def expert_weights(self, task: str, features: Tensor) -> Tensor:
        """Task's mixture weights over the experts: (..., num_experts), or (num_experts,)
        for a static gate. At most k are non-zero once the selectors have saturated."""
        return self.gates[task](features)[0]

    def forward(self, features: Tensor, tasks: Sequence[str]) -> dict[str, Tensor]:
        expert_outputs = self.experts(features)
        outputs: dict[str, Tensor] = {}
        penalties: list[Tensor] = []
        for t in tasks:
            weights, selectors = self.gates[t](features)
            outputs[t] = mix(weights, expert_outputs)
            # Summed over selectors, averaged over examples (one "example" if static).
            examples = weights[..., 0].numel()
            entropy = -(selectors * torch.log(selectors + 1e-6)).sum()
            penalty = self.entropy_weight * entropy / examples
            if not self.power_of_two:
                penalty = penalty + (1 / selectors.sum(-1)).sum() / examples
            penalties.append(penalty)
        self._aux = torch.stack(penalties).sum() if penalties else None
        return outputs

    def auxiliary_loss(self) -> Tensor | None:
        return self._aux

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        return self.gates[task].parameters()
