"""`grad_cosine`: the mean pairwise cosine of the task gradients on the shared parameters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from torch import Tensor

from polytask.affinity._probe import (
    StepProbe,
    TaskLosses,
    check_positive,
    measuring_config,
    run_joint,
)
from polytask.affinity.base import AFFINITY, AffinityMatrix, AffinityMethod
from polytask.balance.gramian import TaskGradients
from polytask.config import RunConfig
from polytask.train.callbacks import StepResult
from polytask.train.trainer import Trainer

#: Balancer options under which the engine's Gramian is not that of the task gradients on
#: the shared parameters at the step's parameters (representation-level, sparse, SAM).
_OTHER_GRAMIAN_OPTIONS = ("representation", "sparse", "sam_rho")


def cosine_matrix(gramian: Tensor) -> np.ndarray:
    """cos_ij = G_ij / sqrt(G_ii G_jj) from a Gramian of task gradients (0 for a zero one)."""
    gram = gramian.detach().double().cpu()
    norms = gram.diagonal().clamp(min=0).sqrt()
    return (gram / (norms[:, None] * norms[None, :]).clamp(min=1e-30)).numpy()


def shared_gramian(losses: Tensor, shared: list[Tensor]) -> Tensor:
    """The T x T Gramian of the gradients of the `losses` vector on `shared`, computed by
    the balancer engine's `TaskGradients` (one batched backward)."""
    return TaskGradients(losses, shared).gramian()


class _CosineProbe(StepProbe):
    """Sums the cosine matrix of every measured step, in the run's task order."""

    def __init__(self, every: int, reuse_balancer_gramian: bool) -> None:
        super().__init__(every)
        self.reuse = reuse_balancer_gramian
        self.total: np.ndarray | None = None
        self.reused_steps = 0

    def measure_step(self, step: StepResult, trainer: Trainer) -> None:
        order = [t for t in trainer.task_names if t in step.losses]
        gramian = step.balancer_result.gramian if step.balancer_result is not None else None
        if self.reuse and gramian is not None and gramian.shape[0] == len(order):
            rows = [list(step.losses).index(t) for t in order]
            cosines = cosine_matrix(gramian)[np.ix_(rows, rows)]
            self.reused_steps += 1
        else:
            cosines = cosine_matrix(self._recompute(step, trainer))
        self.total = cosines if self.total is None else self.total + cosines

    def _recompute(self, step: StepResult, trainer: Trainer) -> Tensor:
        """The Gramian at the model after the step, on the step's batch (eval mode)."""
        losses_of: TaskLosses = self.task_losses(step, trainer)
        was_training = step.model.training
        step.model.eval()
        try:
            losses = losses_of(*losses_of.inputs(step.batch))
            return shared_gramian(losses, step.model.shared_parameters())
        finally:
            step.model.train(was_training)


@AFFINITY.register("grad_cosine", paper="Gradient Surgery for Multi-Task Learning "
                   "(Yu et al. 2020; gradient cosine as the conflict measure)")
class GradCosine(AffinityMethod):
    """Mean pairwise cosine of the task gradients on the shared parameters over a short joint
    run.

    cos(g_i, g_j) = <g_i, g_j> / (|g_i| |g_j|), g_t the gradient of task t's loss on the
    shared parameters, averaged over every `every`-th step of a joint run of the config
    (`steps` steps; None: the config's train.max_steps). Negative cosines are the gradient
    conflict of Yu et al. 2020 ("Gradient Surgery for Multi-Task Learning"); positive ones
    mean the tasks pull the shared parameters the same way. Symmetric.

    The Gramian is the one the balancer engine computes on logging steps (the run logs every
    `every` steps) when the balancer works from task gradients; for a loss weighting (such
    as the default `ew`), or a balancer using `representation`, `sparse` or `sam_rho`, it is
    recomputed by the same engine code (`TaskGradients`) at the parameters after the step,
    on the step's batch, in eval mode. Needs every task in each step: a sampler that feeds
    one task per step is replaced by `all` for the run (with a note).
    """

    definition = ("cos(g_i, g_j) of the task gradients on the shared parameters, mean over "
                  "the measured steps of a joint run")

    def __init__(self, steps: int | None = None, every: int = 1) -> None:
        check_positive("grad_cosine", "steps", steps)
        check_positive("grad_cosine", "every", every)
        self.steps = steps
        self.every = every

    def measure(self, config: RunConfig, work_dir: Path, console: Console) -> AffinityMatrix:
        run_config = measuring_config(config, "grad_cosine", self.steps, self.every, console)
        options = config.balancer.options
        reuse = not any(options.get(name) for name in _OTHER_GRAMIAN_OPTIONS)
        probe = _CosineProbe(self.every, reuse)
        seconds = run_joint(run_config, Path(work_dir) / "grad_cosine-run", probe, console)
        assert probe.trainer is not None and probe.total is not None
        values = probe.total / probe.measured_steps
        np.fill_diagonal(values, np.nan)
        return AffinityMatrix(
            method="grad_cosine", tasks=list(probe.trainer.task_names),
            values=values.tolist(), definition=self.definition,
            direction="higher means the task gradients agree (1: same direction, -1: opposed)",
            symmetric=True, seconds=seconds,
            details={"steps": run_config.train.max_steps, "every": self.every,
                     "measured_steps": probe.measured_steps,
                     "steps_reusing_balancer_gramian": probe.reused_steps,
                     "sampler": run_config.sampler.name},
        )
