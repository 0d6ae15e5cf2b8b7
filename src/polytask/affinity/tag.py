"""`tag`: lookahead inter-task affinity (Fifty et al. 2021, TAG)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import Tensor

from polytask.affinity._probe import (
    StepProbe,
    TaskLosses,
    check_positive,
    measuring_config,
    run_joint,
    shared_parameter_names,
)
from polytask.affinity.base import AFFINITY, AffinityMatrix, AffinityMethod
from polytask.balance.jacobian import task_jacobian
from polytask.config import RunConfig
from polytask.models.inputs import Encoded
from polytask.train.callbacks import StepResult
from polytask.train.trainer import Trainer

log = logging.getLogger(__name__)

#: Errors torch.func.vmap raises for a model it cannot batch (data-dependent control flow,
#: in-place updates of captured tensors, ops without a batching rule).
VMAP_ERRORS = (RuntimeError, NotImplementedError, ValueError)


def lookahead_parameters(named: list[tuple[str, Tensor]], gradients: Tensor,
                         lr: float) -> dict[str, Tensor]:
    """name -> the T stacked values θ − lr·g_i of that shared parameter (row i: task i's
    step), from the T x P matrix of per-task gradients `gradients`."""
    stacked, offset = {}, 0
    for name, param in named:
        size = param.numel()
        step = gradients[:, offset:offset + size].reshape(-1, *param.shape)
        stacked[name] = param.detach().unsqueeze(0) - lr * step.to(param.dtype)
        offset += size
    return stacked


def lookahead_losses(losses_of: TaskLosses, by_task: Mapping[str, Encoded],
                     labels: Mapping[str, Tensor], stacked: Mapping[str, Tensor],
                     batched: bool = True) -> tuple[Tensor, bool]:
    """after[i, j] = L_j at the shared parameters `stacked[·][i]` (heads as they are), and
    whether one `torch.func.vmap` pass computed it (else a loop over the T parameter sets,
    used when `batched` is False or vmap cannot run the model)."""
    def losses_at(params: Mapping[str, Tensor]) -> Tensor:
        return losses_of(by_task, labels, params)

    if batched:
        try:
            return torch.func.vmap(losses_at)(dict(stacked)), True
        except VMAP_ERRORS as error:
            log.debug("tag: torch.func.vmap cannot run this model (%s); evaluating the %d "
                      "lookahead parameter sets one by one", error, len(losses_of.tasks))
    count = next(iter(stacked.values())).shape[0]
    rows = [losses_at({n: v[i] for n, v in stacked.items()}) for i in range(count)]
    return torch.stack(rows), False


def lookahead_affinity(losses_of: TaskLosses, by_task: Mapping[str, Encoded],
                       labels: Mapping[str, Tensor], lr: float,
                       batched: bool = True) -> tuple[np.ndarray, bool]:
    """Z[i, j] = 1 − L_j(θ_s − lr·g_i) / L_j(θ_s) on one batch, g_i task i's gradient on the
    shared parameters θ_s; the model in eval mode (no dropout) for every loss. Returns Z
    (diagonal included) and whether the lookahead ran batched under vmap."""
    model = losses_of.model
    named = shared_parameter_names(model)
    was_training = model.training
    model.eval()
    try:
        losses = losses_of(by_task, labels)
        gradients = task_jacobian(losses, [p for _, p in named])
        with torch.no_grad():
            stacked = lookahead_parameters(named, gradients.detach(), lr)
            after, used_vmap = lookahead_losses(losses_of, by_task, labels, stacked, batched)
    finally:
        model.train(was_training)
    before = losses.detach().clamp(min=torch.finfo(losses.dtype).tiny)
    affinity = 1.0 - after.double() / before.double()[None, :]
    return affinity.cpu().numpy(), used_vmap


class _LookaheadProbe(StepProbe):
    """Sums the lookahead affinity of every measured step, in the run's task order."""

    def __init__(self, every: int, lr: float | None) -> None:
        super().__init__(every)
        self.lr = lr
        self.batched = True
        self.total: np.ndarray | None = None

    def measure_step(self, step: StepResult, trainer: Trainer) -> None:
        losses_of = self.task_losses(step, trainer)
        lr = self.lr if self.lr is not None else float(trainer.scheduler.get_last_lr()[0])
        affinity, self.batched = lookahead_affinity(
            losses_of, *losses_of.inputs(step.batch), lr, self.batched)
        self.total = affinity if self.total is None else self.total + affinity


@AFFINITY.register("tag", paper="Efficiently Identifying Task Groupings for Multi-Task "
                   "Learning (Fifty et al. 2021)")
class TAG(AffinityMethod):
    """Lookahead inter-task affinity: how much a step on task i's gradient lowers task j's
    loss, averaged over a short joint run.

    Z_{i→j} = 1 − L_j(θ_s − lr·g_i) / L_j(θ_s), after Fifty et al. 2021, "Efficiently
    Identifying Task Groupings for Multi-Task Learning" (NeurIPS): g_i is task i's gradient
    on the shared parameters θ_s (task heads stay at their values), L_j task j's loss on the
    same batch, and Z is averaged over every `every`-th step of a joint run of the config
    (`steps` steps; None: the config's train.max_steps), measured at the parameters after
    that step, on that step's batch. Positive: a step for task i helps task j. Directed.

    Lookahead step: plain SGD, θ_s − lr·g_i, with `lr` (None: the run's learning rate at that
    step). The paper steps with the run's optimizer; an SGD step keeps the measure free of
    the optimizer's moment estimates, which mix every task's past gradients into each
    task's step. All T lookahead losses come from one batched pass:
    `torch.func.functional_call` under `torch.func.vmap` over the T stacked parameter sets
    (a loop over them only when vmap cannot run the model; logged at debug level). Needs
    every task in each step: a sampler that feeds one task per step is replaced by `all`.
    """

    definition = ("Z_{i->j} = 1 - L_j(θ_s - lr·g_i) / L_j(θ_s), the SGD lookahead of task i's "
                  "shared-parameter gradient, mean over the measured steps of a joint run")

    def __init__(self, steps: int | None = None, every: int = 5,
                 lr: float | None = None) -> None:
        check_positive("tag", "steps", steps)
        check_positive("tag", "every", every)
        check_positive("tag", "lr", lr)
        self.steps = steps
        self.every = every
        self.lr = lr

    def measure(self, config: RunConfig, work_dir: Path, console: Console) -> AffinityMatrix:
        run_config = measuring_config(config, "tag", self.steps, self.every, console)
        probe = _LookaheadProbe(self.every, self.lr)
        seconds = run_joint(run_config, Path(work_dir) / "tag-run", probe, console)
        assert probe.trainer is not None and probe.total is not None
        values = probe.total / probe.measured_steps
        np.fill_diagonal(values, np.nan)
        return AffinityMatrix(
            method="tag", tasks=list(probe.trainer.task_names), values=values.tolist(),
            definition=self.definition,
            direction="higher means a step on the source task lowers the target's loss more",
            symmetric=False, seconds=seconds,
            details={"steps": run_config.train.max_steps, "every": self.every,
                     "measured_steps": probe.measured_steps,
                     "lookahead_lr": "run" if self.lr is None else self.lr,
                     "lookahead": "vmap" if probe.batched else "loop",
                     "sampler": run_config.sampler.name},
        )
