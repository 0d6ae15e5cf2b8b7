"""Multi-Head Routing (`mhr`): Polytropon with its routing split into heads.

Caccia, Ponti, Su, Pereira, Le Roux and Sordoni, "Multi-Head Adapter Routing for Cross-Task
Generalization" (NeurIPS 2023). Each adapted layer's LoRA skills are partitioned into `heads`
blocks along the input features (A) and the output features (B); each block has its own
routing logits, so a task mixes the skills block by block: a finer-grained combination than
Poly's at almost the same parameter count. Training routes by relaxed-Bernoulli samples,
inference by the normalised sigmoid of the logits (see `poly`).

Trainable parameters, summed over the adapted layers (d_in x d_out each; `heads` divides
both):
    skills x r x (d_in + d_out)  +  T x heads x skills
(with `routing_only: true`, only the routing logits: T x heads x skills per layer).

From PEFT (`peft.tuners.poly`, `n_splits` = heads): the router and the inventory's layout,
initialisation and mixing, as for `poly`.

Few-shot adaptation that fine-tunes only the routing (MHR-z): train `mhr` on the source
tasks, then train the new task(s) with `model.adapter: {name: mhr, source: SOURCE_RUN_DIR,
routing_only: true}` (same r, skills, heads, target_modules and backbone): the skill
inventory is copied from the source and frozen; only the new tasks' routing logits and heads
train. In Python: `MHR.load_inventory(path)` then `MHR.adapt_routing_only()`.
"""

from __future__ import annotations

from collections.abc import Sequence

from polytask.errors import ConfigError
from polytask.models.adapters.base import ADAPTERS
from polytask.models.adapters.poly import Poly


@ADAPTERS.register("mhr", paper="Multi-Head Adapter Routing for Cross-Task Generalization "
                   "(Caccia et al., NeurIPS 2023)")
class MHR(Poly):
    """Multi-head routing: Polytropon's skill routing done separately for `heads` blocks of
    each layer's features; supports few-shot adaptation of the routing only (MHR-z).

    Options: `heads` (routing blocks; must divide the adapted layers' widths), `skills`,
    `source`, `routing_only` (see `poly`).

    Trainable parameters: Σ over adapted layers of skills·r·(d_in + d_out) + T·heads·skills
    (routing_only: T·heads·skills per layer).
    """

    heads: int = 4

    def __init__(self, task_names: Sequence[str], r: int = 8, alpha: float = 16.0,
                 dropout: float = 0.0,
                 target_modules: Sequence[str] | str = ("query", "value"),
                 skills: int = 4, heads: int = 4, source: str | None = None,
                 routing_only: bool = False) -> None:
        super().__init__(task_names, r, alpha, dropout, target_modules, skills, source,
                         routing_only)
        if heads < 1:
            raise ConfigError(f"model.adapter.heads: must be a positive integer, got {heads}")
        self.heads = heads
