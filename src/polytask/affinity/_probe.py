"""What `grad_cosine` and `tag` share: a short joint run of the config with a callback that
measures every `every` steps, and the per-task losses of the model on a step's batch (at its
own parameters, or at substituted shared parameters via `torch.func.functional_call`)."""

from __future__ import annotations

import shutil
import time
from abc import abstractmethod
from collections.abc import Mapping
from pathlib import Path

import torch
from rich.console import Console
from torch import Tensor

from polytask.config import MethodConfig, RunConfig
from polytask.errors import ConfigError
from polytask.models.inputs import Encoded
from polytask.models.model import MultiTaskModel
from polytask.tasks.kinds import TaskKind
from polytask.tasks.sampling import SAMPLERS
from polytask.train.callbacks import Callback, StepResult, TrainerControl, TrainerState
from polytask.train.run_dir import is_run
from polytask.train.trainer import Trainer

Batch = Mapping[str, tuple[Encoded, Tensor]]


class TaskLosses:
    """Per-task losses of `model` on a batch, in `tasks` order, as one vector.

    `params` (name -> tensor) replaces those parameters for the call (the others keep their
    values), which is what lets `torch.func.vmap` evaluate several parameter sets at once.
    """

    def __init__(self, model: MultiTaskModel, kinds: Mapping[str, TaskKind],
                 tasks: list[str], device: torch.device) -> None:
        self.model = model
        self.kinds = kinds
        self.tasks = tasks
        self.device = device

    def inputs(self, batch: Batch) -> tuple[dict[str, Encoded], dict[str, Tensor]]:
        """The batch on the device; tasks sharing an input keep sharing one object (so the
        model runs the backbone once for them, as in training)."""
        moved: dict[int, Encoded] = {}
        by_task, labels = {}, {}
        for task in self.tasks:
            encoded, label = batch[task]
            if id(encoded) not in moved:
                moved[id(encoded)] = {k: v.to(self.device) for k, v in encoded.items()}
            by_task[task] = moved[id(encoded)]
            labels[task] = label.to(self.device)
        return by_task, labels

    def __call__(self, by_task: Mapping[str, Encoded], labels: Mapping[str, Tensor],
                 params: Mapping[str, Tensor] | None = None) -> Tensor:
        if params is None:
            output = self.model(by_task)
        else:
            output = torch.func.functional_call(self.model, dict(params), (by_task,),
                                                strict=False)
        return torch.stack([
            self.kinds[t].loss(output.outputs[t].float(), labels[t]).reshape(())
            for t in self.tasks
        ])


def shared_parameter_names(model: MultiTaskModel) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of each trainable shared parameter, as `named_parameters` names it."""
    shared = {id(p) for p in model.shared_parameters()}
    return [(n, p) for n, p in model.named_parameters() if id(p) in shared]


class StepProbe(Callback):
    """Measures on every `every`-th optimizer step of a joint run (`measure_step`)."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.trainer: Trainer | None = None
        self.measured_steps = 0

    def on_step_end(self, state: TrainerState, control: TrainerControl,
                    step: StepResult) -> None:
        if state.step % self.every or not step.losses or self.trainer is None:
            return
        self.measure_step(step, self.trainer)
        self.measured_steps += 1

    @abstractmethod
    def measure_step(self, step: StepResult, trainer: Trainer) -> None:
        """Record this step's measurement."""

    def task_losses(self, step: StepResult, trainer: Trainer) -> TaskLosses:
        """The loss function over the step's tasks, in the run's task order."""
        tasks = [t for t in trainer.task_names if t in step.batch]
        return TaskLosses(step.model, trainer.data.kinds, tasks, trainer.device)


def check_positive(method: str, field: str, value: int | float | None) -> None:
    """A method option that must be positive (None passes: it means a default)."""
    if value is not None and value <= 0:
        raise ConfigError(f"affinity method {method}: option {field} must be positive, got "
                          f"{value}; pass a positive number")


def measuring_config(config: RunConfig, method: str, steps: int | None, every: int,
                     console: Console) -> RunConfig:
    """The config of the measuring run: `steps` optimizer steps (None: train.max_steps), one
    evaluation at the end, logging (and hence the balancer's Gramian) every `every` steps,
    no callbacks, no baselines; a sampler that feeds one task per step becomes `all`."""
    sampler = config.sampler
    if not SAMPLERS.get(sampler.name).feeds_all_tasks:
        console.print(
            f"[yellow]affinity {method}: sampler {sampler.name!r} feeds one task per step, but "
            f"{method} compares every task's gradient at every step; the measuring run uses "
            "sampler 'all'.", highlight=False)
        sampler = MethodConfig(name="all")
    max_steps = steps or config.train.max_steps
    if every > max_steps:
        raise ConfigError(f"affinity method {method}: every={every} is more than the run's "
                          f"{max_steps} steps, so no step would be measured; lower `every` or "
                          "raise `steps`")
    train = config.train.model_copy(update={
        "max_steps": max_steps, "log_every": every, "eval_every": max_steps,
        "checkpoint_every": None, "callbacks": [], "patience": None,
    })
    return config.model_copy(update={"train": train, "sampler": sampler, "baselines": "none"})


def run_joint(config: RunConfig, run_dir: Path, probe: StepProbe, console: Console) -> float:
    """Train `config` in `run_dir` (an earlier measuring run there is replaced: it is this
    method's scratch folder; a folder that is not a polytask run is refused by the Trainer,
    never deleted) with `probe` attached; returns the wall seconds."""
    started = time.perf_counter()
    if is_run(run_dir):
        shutil.rmtree(run_dir)
    trainer = Trainer(config, run_dir, console=console, callbacks=[probe])
    probe.trainer = trainer
    trainer.fit()
    return time.perf_counter() - started
