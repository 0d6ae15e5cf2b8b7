"""The training loop: sample tasks, forward, balance, step, evaluate, checkpoint, report."""

from __future__ import annotations

import contextlib
import math
import random
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import Tensor, nn

from polytask import balance
from polytask.balance import Balancer, BalanceResult
from polytask.config import RunConfig
from polytask.errors import ConfigError, TrainingError
from polytask.evaluate.evaluation import evaluate, primary, selection_score
from polytask.models.inputs import Encoded
from polytask.models.model import ModelOutput, MultiTaskModel
from polytask.pipeline import prepare, resolve
from polytask.process import init_world, is_main_process
from polytask.registry import UnknownMethodError
from polytask.tasks.data import BatchStream
from polytask.tasks.sampling import SAMPLERS, Sampler
from polytask.tasks.spec import coerce_data
from polytask.train import (
    checkpoint,
    loggers,  # noqa: F401  (registers the built-in callbacks)
)
from polytask.train import run_dir as run_dir_guard
from polytask.train.baselines import baseline_dir, cached_baselines, single_task_config
from polytask.train.callbacks import (
    CALLBACKS,
    ArchitectureSchedule,
    Callback,
    MetricsLog,
    ProgressDisplay,
    StepResult,
    TrainerControl,
    TrainerState,
    loading_status,
    scalars,
)
from polytask.train.distributed import DistributedBalancer
from polytask.train.extras import run_extras, training_view
from polytask.train.results import build_results, save_model, write_json
from polytask.train.schedule import build_optimizer, build_scheduler
from polytask.train.threads import default_threads

#: `nan_policy: stop` checks the noted losses at least this often (in micro-batches).
MAX_UNCHECKED = 1024


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "python_pos": random.getstate()[2],
            "numpy": torch.from_numpy(numpy_state[1].astype(np.int64)), "numpy_pos": numpy_state[2]}


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32),
                         int(state["numpy_pos"]), 0, 0.0))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: {name!r} is not a device; use auto, cpu, cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r}, but torch sees no CUDA device here; use "
                          "auto or cpu")
    return device


def build_method(factory: Any, field: str, name: str, **options: Any) -> Any:
    """`factory.get(name, **options)`, with bad hyperparameters reported as config errors."""
    try:
        return factory.get(name, **options)
    except TypeError as error:
        raise ConfigError(f"{field}: bad hyperparameters for {name!r}: {error}") from None
    except (ValueError, UnknownMethodError) as error:
        raise ConfigError(f"{field}: {error}") from None


def gradient_cosines(names: list[str], gramian: Tensor) -> dict[str, float]:
    """Pairwise cosine similarity of the task gradients, from their Gramian."""
    norms = gramian.diagonal().clamp(min=0).sqrt()
    cosines = gramian / (norms[:, None] * norms[None, :]).clamp(min=1e-30)
    return {f"cosine/{a}/{b}": float(cosines[i, j])
            for i, a in enumerate(names) for j, b in enumerate(names) if i < j}


def with_task_data(config: RunConfig, data: Mapping[str, Any]) -> RunConfig:
    """`config` whose tasks read `data[task]` (a DataFrame, a `datasets.Dataset` or
    `DatasetDict`, a dict of splits, or a `DataSpec`) instead of their configured data."""
    tasks = resolve(config).tasks
    names = [t.name for t in tasks]
    unknown = [n for n in data if n not in names]
    if unknown:
        raise ConfigError(f"Trainer(data=...): no task named {unknown}; the tasks are {names}. "
                          "Key the data by task name.")
    try:
        tasks = [t.model_copy(update={"data": coerce_data(data[t.name])}) if t.name in data
                 else t for t in tasks]
    except ValueError as error:
        raise ConfigError(f"Trainer(data=...): {error}") from None
    return config.model_copy(update={"tasks": tasks})


class _Constructor:
    """A registry seen as a factory: `get(name, **options)` builds the entry."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def get(self, name: str, **options: Any) -> Any:
        return self.registry.get(name)(**options)


class _StopRequest:
    """Turns SIGTERM/SIGINT into a request to checkpoint and stop after the current step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if self.requested:  # a second signal stops at once
            raise KeyboardInterrupt(f"signal {signum}")
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Trains the tasks of a `RunConfig` jointly and writes a run directory.

    `Trainer(config, run_dir).fit()` returns the results dict also written to
    `run_dir/results.json`. `resume=True` continues from the newest good checkpoint (or
    starts from step 0 when there is none yet); the config may then differ from the run's
    only in `run_dir.RESUMABLE_KEYS` (`compare_config=False` skips that check, for folders
    keyed by their content, such as the single-task baselines). `baselines` maps task name
    -> single-task test value of its primary metric (for Δm%); when not given, `fit()` reads
    or trains them as `config.baselines` says (auto / cached / none), as `polytask train`
    does. `config_path`: the file the config was read from, which the run must never write
    over. The folder is guarded and locked as `polytask.train.run_dir` describes.

    Extending it, as with the Hugging Face and Lightning trainers:
    `model`: an `nn.Module` backbone (fed the inputs the config's backbone type encodes; its
    feature width is its `output_dim` or `feature_dim` attribute), wrapped with the config's
    sharing architecture and heads, or a ready `MultiTaskModel` with a head per task.
    `polytask.load` rebuilds only models the config describes.
    `data`: task name -> its data (a DataFrame, `datasets.Dataset`/`DatasetDict`, or a dict
    split -> rows), in place of the task's configured `data`.
    `callbacks`: `Callback` objects, run after those `train.callbacks` names; their events
    and the `TrainerState`/`TrainerControl` they get are described in
    `polytask.train.callbacks`.
    """

    def __init__(self, config: RunConfig, run_dir: str | Path | None = None,
                 resume: bool = False, console: Console | None = None,
                 baselines: Mapping[str, float | None] | None = None,
                 config_path: str | Path | None = None, compare_config: bool = True, *,
                 model: nn.Module | None = None, data: Mapping[str, Any] | None = None,
                 callbacks: Sequence[Callback] = ()) -> None:
        self.config = with_task_data(config, data) if data else config
        self.user_model = model
        self.user_callbacks = list(callbacks)
        self.run_dir = Path(run_dir or Path("runs") / (config.name or "run"))
        self.resume = resume
        self.console = console or Console(stderr=True)
        # None: fit() reads or trains them as `config.baselines` says
        self.baselines = dict(baselines) if baselines is not None else None
        self.config_path = Path(config_path) if config_path is not None else None
        self.compare_config = compare_config
        self._check_run_dir()
        if is_main_process():
            run_dir_guard.check_free(self.run_dir)  # in use: say so before any work

    def _check_run_dir(self) -> None:
        """Refuse a folder this run must not write; decide whether it continues a run."""
        run_dir_guard.check_target(self.run_dir, self.config_path)
        run_dir_guard.check_source(self.run_dir, self.config_path, self.config.dump())
        has_results = (self.run_dir / "results.json").exists()
        has_checkpoints = bool(checkpoint.list_checkpoints(self.run_dir / "checkpoints"))
        self.continuing = self.resume and has_checkpoints
        self.resume_changes: dict[str, tuple[Any, Any]] = {}
        if self.resume:
            if has_results:
                raise ConfigError(f"--resume: the run in {self.run_dir} has finished (it has "
                                  "results.json); nothing to resume, nothing was overwritten")
            if self.continuing and self.compare_config:
                self.resume_changes = run_dir_guard.config_changes(self.run_dir,
                                                                   self.config.dump())
            return
        if has_results or has_checkpoints:
            raise ConfigError(
                f"run dir {self.run_dir} already holds a run; pass --resume to continue it, or "
                "choose another --run-dir (nothing was overwritten)"
            )

    # -- setup ------------------------------------------------------------------------
    def _setup(self) -> None:
        train = self.config.train
        if train.threads:  # for data loading too; null is decided once the model is built
            torch.set_num_threads(train.threads)
        seed_everything(train.seed)
        self.world, self.device = init_world(resolve_device(train.device))
        with loading_status(self.console, train.progress and is_main_process()):
            self.data, self.model, self.encoder, self.backbone_spec = self._prepare()
        self.all_data = self.data  # with the tasks `split` holds out, scored after training
        self.data = training_view(self.data, self.config.split)
        torch.set_num_threads(train.threads or default_threads(self.model))
        self.model.to(self.device)
        self.world.broadcast_module(self.model)
        self.task_names = [t.name for t in self.data.tasks]
        self.balancer: Balancer = build_method(
            balance, "balancer", self.config.balancer.name, **self.config.balancer.options)
        if self.world.distributed:
            self.balancer = DistributedBalancer(self.balancer, self.world)
        self.balancer.setup(self.task_names)
        self.sampler: Sampler = build_method(
            _Constructor(SAMPLERS), "sampler", self.config.sampler.name,
            sizes=self.data.train_sizes(), total_steps=train.max_steps * train.grad_accum,
            seed=train.seed, **self.config.sampler.options)
        self.stream = BatchStream(self.data, train.batch_size, train.seed,
                                  self.world.rank, self.world.size, train.num_workers)
        for note in self.stream.cap_notes() if is_main_process() else []:
            self.console.print(f"[yellow]{note}", highlight=False)
        self.callbacks = self._build_callbacks()
        self.optimizer = build_optimizer(self.model, self.balancer.parameters(), train)
        self.scheduler = build_scheduler(self.optimizer, train)
        self.shared_params = self.model.shared_parameters()
        self._task_params: dict[tuple[str, ...], list[torch.nn.Parameter]] = {}
        self.step = 0
        self.best: dict[str, Any] = {"score": -math.inf, "step": None, "reference": None,
                                     "stale": 0, "validation": None}
        self.state = TrainerState(train.max_steps, self.run_dir, self.config.dump(), self.best,
                                  epochs=self._epochs)
        self.control = TrainerControl()
        # nan_policy stop: (step, tasks, losses) not yet checked for NaN/inf
        self._unchecked: list[tuple[int, tuple[str, ...], list[Tensor]]] = []

    def _prepare(self) -> tuple[Any, MultiTaskModel, Any, Any]:
        """The data, the model (the user's, when given), the input encoder, the backbone spec."""
        own = self.user_model
        # the user's backbone (a ready model's own): the configured one is never loaded
        backbone = own.backbone if isinstance(own, MultiTaskModel) else own
        data, model, encoder, spec = prepare(self.config, backbone=backbone)
        if isinstance(own, MultiTaskModel):
            missing = [t.name for t in data.tasks if t.name not in own.heads]
            if missing:
                raise ConfigError(f"Trainer(model=...): the MultiTaskModel has no head for "
                                  f"task(s) {missing}; its heads are {list(own.heads)}. Give it "
                                  "a head per task, or pass its backbone alone.")
            model = own
        return data, model, encoder, spec

    def _build_callbacks(self) -> list[Callback]:
        """The architecture's schedule (if it has one), the `train.callbacks` names (main
        process only), then the user's callback objects."""
        architecture = self.model.architecture
        schedule = ([ArchitectureSchedule(architecture, self._refresh_parameter_split)]
                    if ArchitectureSchedule.wanted(architecture) else [])
        adapter = self.model.adapter
        if adapter is not None and ArchitectureSchedule.wanted(adapter):
            schedule.append(ArchitectureSchedule(adapter, self._refresh_parameter_split))
        named = [build_method(_Constructor(CALLBACKS), "train.callbacks", name)
                 for name in self.config.train.callbacks] if is_main_process() else []
        return [*schedule, *named, *self.user_callbacks]

    def _report_trainable(self) -> None:
        """With an adapter: print the trainable parameters, absolute and as a share of the
        frozen backbone."""
        adapter = self.model.adapter
        if adapter is None or not is_main_process():
            return
        added = {id(p) for p in adapter.adapter_parameters()}
        backbone = sum(p.numel() for p in self.model.backbone.parameters() if id(p) not in added)
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.console.print(
            f"adapter {adapter.name}: {trainable:,} trainable parameters "
            f"({100 * trainable / max(backbone, 1):.2f}% of the backbone's {backbone:,}; "
            f"the adapter's own: {adapter.trainable_parameter_count():,})", highlight=False)

    def _refresh_parameter_split(self) -> None:
        """Re-read which parameters are shared after the architecture changed its split."""
        self.shared_params = self.model.shared_parameters()
        self._task_params.clear()

    def _epochs(self) -> dict[str, float]:
        """Per task, the passes made over its training rows so far."""
        out = {}
        for task in self.task_names:
            source = self.data.task_source[task]
            epoch, position = self.stream.position[source]
            out[task] = epoch + position / self.data.splits[source]["train"].size
        return out

    def _fire(self, event: str, *args: Any) -> None:
        """Call `event` of every callback with the state, the control and `args`."""
        for callback in self.callbacks:
            getattr(callback, event)(self.state, self.control, *args)

    def _write_start(self) -> None:
        if not is_main_process():
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.continuing:
            run_dir_guard.write_config(self.run_dir, self.config.dump())
            write_json(self.run_dir / "splits.json", self.data.record)

    def _restore(self) -> None:
        found = checkpoint.load_latest(self.run_dir / "checkpoints",
                                       warn=lambda m: self.console.print(f"[yellow]{m}"))
        if found is None:
            raise ConfigError(f"--resume: no readable checkpoint in {self.run_dir / 'checkpoints'}")
        step, weights, state = found
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.stream.load_state_dict(state["stream"])
        self.balancer.load_state_dict(state["balancer"])
        set_rng_state(state["rng"])
        self.best.clear()  # in place: the TrainerState shows the same dict
        self.best.update(state["best"])
        self.step = self.state.step = step
        self.log.truncate_after(step)
        if is_main_process():
            run_dir_guard.record_resume(self.run_dir, step, self.resume_changes,
                                        self.config.dump())
        changed = "".join(f"; {key}: {old!r} -> {new!r}"
                          for key, (old, new) in self.resume_changes.items())
        self.console.print(f"resumed from step {step}{changed}", highlight=False)

    def _save_checkpoint(self) -> None:
        """Write a checkpoint of this step (main process: every rank holds the same state)."""
        if not is_main_process():
            return
        state = {"optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(),
                 "sampler": self.sampler.state_dict(), "stream": self.stream.state_dict(),
                 "balancer": self.balancer.state_dict(), "rng": rng_state(), "best": self.best}
        written = checkpoint.save(self.run_dir / "checkpoints", self.step,
                                  self.model.state_dict(), state,
                                  self.config.train.keep_checkpoints)
        self._fire("on_save", written)

    # -- one step ---------------------------------------------------------------------
    def _forward(self, batch: Mapping[str, tuple[Encoded, Tensor]]
                 ) -> tuple[dict[str, Tensor], ModelOutput]:
        """Each task's loss on `batch`, and the model's output."""
        on_cpu = self.device.type == "cpu"  # batches are made there: nothing to move
        by_task = ({t: encoded for t, (encoded, _) in batch.items()} if on_cpu
                   else self._inputs_on_device(batch))
        kinds = self.data.kinds
        with self._autocast():
            output = self.model(by_task)
            return {t: kinds[t].training_loss(output.outputs[t].float(),
                                              labels if on_cpu else labels.to(self.device))
                    for t, (_, labels) in batch.items()}, output

    def _inputs_on_device(self, batch: Mapping[str, tuple[Encoded, Tensor]]
                          ) -> dict[str, Encoded]:
        """Each task's inputs on the device; tasks that share an input keep sharing one
        object (moved once, and one backbone pass)."""
        moved: dict[int, Encoded] = {}
        by_task = {}
        for task, (encoded, _) in batch.items():
            key = id(encoded)
            if key not in moved:
                moved[key] = {k: v.to(self.device) for k, v in encoded.items()}
            by_task[task] = moved[key]
        return by_task

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast when `train.precision` says bf16; otherwise no context at all
        (entering a disabled autocast costs ~15 µs a step)."""
        if self.config.train.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _record(self, record: dict[str, Any]) -> None:
        self.log.write(record)
        if self.callbacks:
            self.state.metrics.update(scalars(record))
        self._fire("on_log", record)

    def _check_finite(self, losses: Mapping[str, Tensor]) -> bool:
        """False when the micro-batch is to be skipped. `nan_policy: skip` decides at once
        (one host sync per micro-batch); `stop` only notes the losses, for
        `_raise_if_nonfinite` to check on logging steps and before any evaluation or
        checkpoint, so that no step waits on the device for it."""
        if self.config.train.nan_policy != "skip":
            self._unchecked.append((self.step + 1, tuple(losses),
                                    [v.detach() for v in losses.values()]))
            return True
        bad = self._nonfinite_tasks(losses, world=True)
        if not bad:
            return True
        self.console.print(f"[yellow]step {self.step + 1}: non-finite loss for {bad}; "
                           "batch skipped (train.nan_policy: skip)")
        return False

    def _nonfinite_tasks(self, losses: Mapping[str, Tensor], world: bool) -> list[str]:
        """The tasks whose loss is NaN/inf; with `world`, every process decides alike (a
        collective: all must call it)."""
        finite = torch.isfinite(torch.stack([v.detach().reshape(()) for v in losses.values()]))
        bad = [] if bool(finite.all()) else [t for t, ok in zip(losses, finite.tolist(),
                                                                strict=True) if not ok]
        if world and self.world.any(bool(bad), self.device) and not bad:
            bad = ["(another process)"]
        return bad

    def _raise_if_nonfinite(self, world: bool = True) -> None:
        """`nan_policy: stop`: raise, naming the first step and its tasks, if a loss noted
        since the last check was NaN/inf (one host sync for all of them). `world`: as in
        `_nonfinite_tasks`."""
        unchecked, self._unchecked = self._unchecked, []
        if not unchecked:
            return
        values = torch.stack([v.reshape(()) for _, _, vs in unchecked for v in vs])
        found = not bool(torch.isfinite(values).all())
        if not (self.world.any(found, self.device) if world else found):
            return
        found_at = ((step, self._nonfinite_tasks(dict(zip(tasks, losses, strict=True)),
                                                 world=False))
                    for step, tasks, losses in unchecked)
        step, bad = next(((s, b) for s, b in found_at if b),
                         (unchecked[-1][0], ["(another process)"]))
        raise TrainingError(
            f"step {step}: the loss of task(s) {bad} is NaN/inf. The last good "
            f"checkpoint is kept in {self.run_dir / 'checkpoints'}. Lower train.lr, check the "
            "labels, or set train.nan_policy: skip."
        )

    def _train_step(self) -> StepResult:
        """One optimizer step: forward and balance each of the `train.grad_accum`
        micro-batches, then update. `StepResult.logged` is empty except on logging steps."""
        train = self.config.train
        logging = (self.step + 1) % train.log_every == 0 or self.step + 1 == train.max_steps
        logged: dict[str, float] = {}
        loss_sums: dict[str, list[Tensor]] = {}  # each task's micro-batch losses
        batch: Mapping[str, tuple[Encoded, Tensor]] = {}
        losses: dict[str, Tensor] = {}
        output: ModelOutput | None = None
        result: BalanceResult | None = None
        skipped = False
        for micro in range(train.grad_accum):
            batch = self._next_batch(micro)
            losses, output = self._forward(batch)
            if not self._check_finite(losses):
                skipped, losses, output = True, {}, None
                continue
            self._backward_auxiliary(output, logged if logging else None)
            result = self._balance(batch, losses, output, logging)
            if logging:
                self._log_micro_batch(logged, loss_sums, losses, result)
        logged.update({f"loss/{t}": float(torch.stack(v).mean()) for t, v in loss_sums.items()})
        if skipped and train.grad_accum == 1:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self._apply_update(batch, logged if logging else None)
        return StepResult(self.model, batch, losses, output, result, logged)

    def _next_batch(self, micro: int) -> dict[str, tuple[Encoded, Tensor]]:
        """The sampled tasks' batch for micro-batch `micro` of this step."""
        index = self.step * self.config.train.grad_accum + micro
        return self.stream.next_batch(self.sampler.tasks_for_step(index))

    def _backward_auxiliary(self, output: ModelOutput, logged: dict[str, float] | None) -> None:
        """Backpropagate the architecture's auxiliary loss, weighted by
        `model.auxiliary_loss_weight` (logged into `logged` when given)."""
        weight = self.config.model.auxiliary_loss_weight
        if output.auxiliary_loss is None or not weight:
            return
        (output.auxiliary_loss * weight / self.config.train.grad_accum
         ).backward(retain_graph=True)
        if logged is not None:
            logged["auxiliary_loss"] = output.auxiliary_loss.item()

    def _balance(self, batch: Mapping[str, tuple[Encoded, Tensor]], losses: dict[str, Tensor],
                 output: ModelOutput, logging: bool) -> BalanceResult:
        """The balancer's part of a micro-batch: the task losses -> gradients in `.grad`
        (shared parameters balanced, task-specific ones from their own task). Returns the
        engine's `BalanceResult` (the task weights applied; on logging steps, the Gramian of
        the task gradients for methods that see them)."""
        self.balancer.set_closure(lambda: self._scaled(self._forward(batch)[0]))
        return balance.backward(
            self._scaled(losses), self.shared_params, self.balancer,
            features=output.features if self.balancer.supports_features else None,
            task_params=self._params_of(tuple(losses)), gramian=logging)

    def _scaled(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """`losses` / `train.grad_accum` (as they are without accumulation: dividing by 1
        changes no bit, and would cost two kernels per task), weighed by the adapter when it
        weighs them (palora's training preference)."""
        if self.model.adapter is not None:
            losses = self.model.adapter.weigh_losses(losses)
        accum = self.config.train.grad_accum
        return losses if accum == 1 else {t: v / accum for t, v in losses.items()}

    def _log_micro_batch(self, logged: dict[str, float], loss_sums: dict[str, list[Tensor]],
                         losses: Mapping[str, Tensor], result: BalanceResult) -> None:
        """On a logging step: gradient cosines, the losses to average, the task weights."""
        if result.gramian is not None:
            logged.update(gradient_cosines(list(losses), result.gramian))
        for task, value in losses.items():
            loss_sums.setdefault(task, []).append(value.detach())
        logged.update({f"weight/{t}": w for t, w in result.weights.items()})

    def _apply_update(self, batch: Mapping[str, tuple[Encoded, Tensor]],
                      logged: dict[str, float] | None) -> None:
        """Reduce across processes, clip, step the optimizer and the schedule, then let the
        balancer see the updated model on the last `batch` (grad norm and lr into `logged`)."""
        train = self.config.train
        if isinstance(self.balancer, DistributedBalancer):
            self.balancer.finish_step(self.balancer.parameters())
        if train.grad_clip:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            norm = torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
            if logged is not None:
                logged["grad_norm"] = float(norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.balancer.after_step(lambda: self._recompute(batch))
        if logged is not None:
            logged["lr"] = self.scheduler.get_last_lr()[0]

    def _run_step(self, bar: ProgressDisplay) -> float:
        """One step with its callback events and its train record; returns the seconds
        `_train_step` took."""
        self._fire("on_step_begin")
        tick = time.perf_counter()
        try:
            step = self._train_step()
        except Exception:
            self._raise_if_nonfinite(world=False)  # a NaN loss is the likelier cause
            raise
        elapsed = time.perf_counter() - tick
        if step.logged or len(self._unchecked) >= MAX_UNCHECKED:
            self._raise_if_nonfinite()
        self.step = self.state.step = self.step + 1
        self._fire("on_step_end", step)
        if step.logged:
            self._record({"step": self.step, "split": "train", **step.logged})
        bar.update(self.step, {k: v for k, v in step.logged.items() if k.startswith("loss/")})
        return elapsed

    def _agree(self, stop_requested: bool) -> bool:
        """Make every process decide alike: a signal to one process (`stop_requested`, which
        is returned agreed) or a control flag set on one counts for all. One all-reduce,
        only under torchrun."""
        if not self.world.distributed:
            return stop_requested
        control = self.control
        flags = torch.tensor([stop_requested, control.should_stop, control.should_evaluate,
                              control.should_save], dtype=torch.float32, device=self.device)
        agreed = (self.world.mean_(flags) > 0).tolist()
        stop_requested, control.should_stop, control.should_evaluate, control.should_save = agreed
        return bool(stop_requested)

    def _params_of(self, tasks: tuple[str, ...]) -> list[torch.nn.Parameter]:
        if tasks not in self._task_params:
            self._task_params[tasks] = self.model.all_task_parameters(list(tasks))
        return self._task_params[tasks]

    @torch.no_grad()
    def _recompute(self, batch: Mapping[str, tuple[Encoded, Tensor]]) -> dict[str, Tensor]:
        return self._forward(batch)[0]

    # -- evaluation -------------------------------------------------------------------
    def _evaluate(self) -> bool:
        """Validate; remember the best weights; fire `on_evaluate`. True when early stopping
        says stop."""
        metrics = evaluate(self.model, self.data, "validation",
                           self.config.train.eval_batch_size, self.device, self.world)
        values = primary(metrics, self.data)
        if self.best["reference"] is None:
            self.best["reference"] = values
        score = selection_score(values, self.best["reference"], self.data)
        self._record({"step": self.step, "split": "validation", "score": score,
                        **{f"{t}/{m}": v for t, ms in metrics.items() for m, v in ms.items()}})
        if score > self.best["score"]:
            self.best.update(score=score, step=self.step, stale=0, validation=metrics)
            if is_main_process():
                checkpoint.save_weights(self.model.state_dict(), self.run_dir / "best" /
                                        "model.safetensors")
        else:
            self.best["stale"] += 1
        self._fire("on_evaluate", metrics)
        patience = self.config.train.patience
        return patience is not None and self.best["stale"] >= patience

    # -- the run ----------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train, keep the best validation checkpoint, evaluate on test, write results.

        The run folder is locked for the whole call (see `polytask.train.run_dir`)."""
        with run_dir_guard.RunLock(self.run_dir, enabled=is_main_process()):
            self._check_run_dir()  # again: another process may have written it meanwhile
            return self._fit()

    def _resolve_baselines(self) -> dict[str, float | None]:
        """The single-task baselines `config.baselines` asks for: `auto` trains missing ones
        (every process takes part, as in training), `cached` reads recorded ones, `none`
        skips them. A baseline's own config says `none`, so this never recurses."""
        if self.config.baselines == "auto":
            return train_baselines(self.config, self.console)
        if self.config.baselines == "cached":
            return cached_baselines(self.config)
        return {}

    def _fit(self) -> dict[str, Any]:
        if self.baselines is None:
            self.baselines = self._resolve_baselines()
        started = time.perf_counter()
        self._setup()
        self._report_trainable()
        self._write_start()
        self.log = MetricsLog(self.run_dir / "metrics.jsonl", append=self.continuing,
                              enabled=is_main_process())
        if self.continuing:
            self._restore()
        elif self.resume:
            self.console.print(f"no checkpoint in {self.run_dir} yet; starting from step 0",
                               highlight=False)
        self._fire("on_train_begin")
        step_times, stopped_early = self._loop()
        self.world.barrier()  # the first process has written the best weights
        if self.best["step"] is not None:
            best = checkpoint.load_weights_file(self.run_dir / "best" / "model.safetensors")
            self.model.load_state_dict(best)
        if is_main_process():
            save_model(self.run_dir / "model", self.model, self.all_data, self.backbone_spec,
                       self.encoder, self.config)
        test = evaluate(self.model, self.data, "test", self.config.train.eval_batch_size,
                        self.device, self.world)
        results = build_results(self.config, self.data, test, self.best, self.step,
                                self.baselines, stopped_early,
                                wall_time=time.perf_counter() - started,
                                step_time=float(np.median(step_times)) if step_times else None)
        results.update(run_extras(self.model, self.all_data, self.data, self.config.split, test,
                                  self.config.train.eval_batch_size, self.device, self.world))
        self._record({"step": self.step, "split": "test",
                        **{f"{t}/{m}": v for t, ms in test.items() for m, v in ms.items()}})
        self.log.close()
        if is_main_process():
            write_json(self.run_dir / "results.json", results)
        self._fire("on_train_end", results)
        self.world.barrier()
        return results

    def _loop(self) -> tuple[list[float], bool]:
        """Step until `train.max_steps`, early stopping, a callback's `should_stop` or a
        signal (which raises once checkpointed). Returns the step times and whether it
        stopped before `train.max_steps`."""
        train = self.config.train
        every = train.checkpoint_every or train.eval_every
        control = self.control
        step_times: list[float] = []
        stopped_early = False
        show = train.progress and is_main_process()
        with ProgressDisplay(train.max_steps, self.step, show, self.console,
                             train.log_every) as bar, \
                _StopRequest() as stop:
            stop.requested = self._agree(stop.requested)  # flags set in on_train_begin
            while self.step < train.max_steps and not control.should_stop:
                step_times.append(self._run_step(bar))
                stop.requested = self._agree(stop.requested)
                if (self.step % train.eval_every == 0 or self.step == train.max_steps
                        or control.should_evaluate):
                    self._raise_if_nonfinite()
                    stopped_early = self._evaluate()
                    stop.requested = self._agree(stop.requested)  # on_evaluate's flags
                if (self.step % every == 0 or stopped_early or stop.requested
                        or control.should_save or control.should_stop):
                    self._raise_if_nonfinite()
                    self._save_checkpoint()
                control.should_evaluate = control.should_save = False
                if stop.requested:
                    raise TrainingError(f"stopped by a signal at step {self.step}; checkpoint "
                                        f"written; continue with --resume")
                if stopped_early:
                    self.console.print(f"early stop at step {self.step}: no improvement in "
                                       f"{train.patience} evaluations")
                    break
        if control.should_stop and self.step < train.max_steps:
            self.console.print(f"stopped by a callback at step {self.step}", highlight=False)
            stopped_early = True
        return step_times, stopped_early


def train_baselines(config: RunConfig, console: Console | None = None,
                    ) -> dict[str, float | None]:
    """Train every missing single-task baseline of `config` (resuming an interrupted one)
    and return all values. Their keys and cache are `polytask.train.baselines`'; the
    training is here, beside the Trainer that does it (and that calls this for
    `baselines: auto`), so that neither module imports the other in a cycle."""
    console = console or Console(stderr=True)
    for task, value in cached_baselines(config).items():
        if value is not None:
            console.print(f"baseline {task}: cached")
            continue
        directory = baseline_dir(config, task)
        console.print(f"baseline {task}: training alone -> {directory}")
        # resume: from the newest checkpoint, or from step 0 in a run folder whose attempt
        # crashed before its first one (a folder that is not a run is refused, not deleted).
        # The folder is keyed by what defines the baseline, so the config is not compared.
        Trainer(single_task_config(config, task), directory, resume=directory.exists(),
                console=console, compare_config=False).fit()
    return cached_baselines(config)
