"""The training loop: sample tasks, forward, balance, step, evaluate, checkpoint, report."""

from __future__ import annotations

import contextlib
import math
import random
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import Tensor

from polytask import balance
from polytask.balance import Balancer
from polytask.config import RunConfig
from polytask.errors import ConfigError, TrainingError
from polytask.evaluate.evaluation import evaluate, primary, selection_score
from polytask.models.inputs import Encoded
from polytask.pipeline import prepare
from polytask.registry import UnknownMethodError
from polytask.tasks.data import BatchStream
from polytask.tasks.sampling import SAMPLERS, Sampler
from polytask.train import checkpoint
from polytask.train import run_dir as run_dir_guard
from polytask.train.callbacks import (
    CALLBACKS,
    Callback,
    MetricsLog,
    ProgressDisplay,
    loading_status,
)
from polytask.train.distributed import DistributedBalancer, init_world
from polytask.train.results import build_results, save_model, write_json
from polytask.train.schedule import build_optimizer, build_scheduler
from polytask.train.threads import default_threads


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
    """

    def __init__(self, config: RunConfig, run_dir: str | Path | None = None,
                 resume: bool = False, console: Console | None = None,
                 baselines: Mapping[str, float | None] | None = None,
                 config_path: str | Path | None = None, compare_config: bool = True) -> None:
        self.config = config
        self.run_dir = Path(run_dir or Path("runs") / (config.name or "run"))
        self.resume = resume
        self.console = console or Console(stderr=True)
        # None: fit() reads or trains them as `config.baselines` says
        self.baselines = dict(baselines) if baselines is not None else None
        self.config_path = Path(config_path) if config_path is not None else None
        self.compare_config = compare_config
        self._check_run_dir()
        if run_dir_guard.is_main_process():
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
        with loading_status(self.console, train.progress and self.world.is_main):
            self.data, self.model, self.encoder, self.backbone_spec = prepare(self.config)
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
                                  self.world.rank, self.world.size)
        for note in self.stream.cap_notes() if self.world.is_main else []:
            self.console.print(f"[yellow]{note}", highlight=False)
        self.callbacks: list[Callback] = [
            build_method(_Constructor(CALLBACKS), "train.callbacks", name)
            for name in train.callbacks] if self.world.is_main else []
        self.optimizer = build_optimizer(self.model, self.balancer.parameters(), train)
        self.scheduler = build_scheduler(self.optimizer, train)
        self.shared_params = self.model.shared_parameters()
        self._task_params: dict[tuple[str, ...], list[torch.nn.Parameter]] = {}
        self.step = 0
        self.best: dict[str, Any] = {"score": -math.inf, "step": None, "reference": None,
                                     "stale": 0, "validation": None}

    def _write_start(self) -> None:
        if not self.world.is_main:
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
        self.best = dict(state["best"])
        self.step = step
        self.log.truncate_after(step)
        if self.world.is_main:
            run_dir_guard.record_resume(self.run_dir, step, self.resume_changes,
                                        self.config.dump())
        changed = "".join(f"; {key}: {old!r} -> {new!r}"
                          for key, (old, new) in self.resume_changes.items())
        self.console.print(f"resumed from step {step}{changed}", highlight=False)

    def _save_checkpoint(self) -> None:
        if not self.world.is_main:  # every rank holds the same state
            return
        state = {"optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(),
                 "sampler": self.sampler.state_dict(), "stream": self.stream.state_dict(),
                 "balancer": self.balancer.state_dict(), "rng": rng_state(), "best": self.best}
        checkpoint.save(self.run_dir / "checkpoints", self.step, self.model.state_dict(), state,
                        self.config.train.keep_checkpoints)

    # -- one step ---------------------------------------------------------------------
    def _forward(self, batch: Mapping[str, tuple[Encoded, Tensor]]) -> dict[str, Tensor]:
        inputs: dict[int, Encoded] = {}
        by_task = {}
        for task, (encoded, _) in batch.items():  # move each shared input to device once
            key = id(encoded)
            if key not in inputs:
                inputs[key] = {k: v.to(self.device) for k, v in encoded.items()}
            by_task[task] = inputs[key]
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.config.train.precision == "bf16"):
            outputs = self.model(by_task)
            return {t: self.data.kinds[t].loss(outputs[t].float(),
                                               batch[t][1].to(self.device)) for t in batch}

    def _record(self, record: dict[str, Any]) -> None:
        self.log.write(record)
        for callback in self.callbacks:
            callback.on_log(record)

    def _check_finite(self, losses: Mapping[str, Tensor]) -> bool:
        values = torch.stack([v.detach().reshape(()) for v in losses.values()])
        finite = torch.isfinite(values)
        bad = [] if bool(finite.all()) else [t for t, ok in zip(losses, finite.tolist(),
                                                                strict=True) if not ok]
        if self.world.any(bool(bad), self.device) and not bad:  # all ranks decide alike
            bad = ["(another process)"]
        if not bad:
            return True
        if self.config.train.nan_policy == "skip":
            self.console.print(f"[yellow]step {self.step + 1}: non-finite loss for {bad}; "
                               "batch skipped (train.nan_policy: skip)")
            return False
        raise TrainingError(
            f"step {self.step + 1}: the loss of task(s) {bad} is NaN/inf. The last good "
            f"checkpoint is kept in {self.run_dir / 'checkpoints'}. Lower train.lr, check the "
            "labels, or set train.nan_policy: skip."
        )

    def _train_step(self) -> dict[str, float]:
        """One optimizer step. Returns what is logged: empty except on logging steps."""
        train = self.config.train
        logging = (self.step + 1) % train.log_every == 0 or self.step + 1 == train.max_steps
        if self.model.architecture.before_step(self.step, train.max_steps):
            self.shared_params = self.model.shared_parameters()
            self._task_params.clear()
        logged: dict[str, float] = {}
        batch: Mapping[str, tuple[Encoded, Tensor]] = {}
        loss_sums: dict[str, list[Tensor]] = {}  # each task's micro-batch losses
        skipped = False
        for micro in range(train.grad_accum):
            tasks = self.sampler.tasks_for_step(self.step * train.grad_accum + micro)
            batch = self.stream.next_batch(tasks)
            losses = self._forward(batch)
            if not self._check_finite(losses):
                skipped = True
                continue
            scaled = {t: v / train.grad_accum for t, v in losses.items()}
            auxiliary = self.model.auxiliary_loss()
            if auxiliary is not None and self.config.model.auxiliary_loss_weight:
                (auxiliary * self.config.model.auxiliary_loss_weight / train.grad_accum
                 ).backward(retain_graph=True)
                if logging:
                    logged["auxiliary_loss"] = auxiliary.item()
            self.balancer.set_closure(lambda b=batch: {
                t: v / train.grad_accum for t, v in self._forward(b).items()})
            features = self.model.representation if self.balancer.supports_features else None
            self.balancer.record_gramian = logging
            weights = self.balancer.backward(
                scaled, self.shared_params, features=features,
                task_params=self._params_of(tuple(losses)))
            if not logging:
                continue
            if self.balancer.last_gramian is not None:
                logged.update(gradient_cosines(list(losses), self.balancer.last_gramian))
            for task, value in losses.items():
                loss_sums.setdefault(task, []).append(value.detach())
            logged.update({f"weight/{t}": w for t, w in weights.items()})
        logged.update({f"loss/{t}": float(torch.stack(v).mean()) for t, v in loss_sums.items()})
        if skipped and train.grad_accum == 1:
            self.optimizer.zero_grad(set_to_none=True)
            return logged
        if isinstance(self.balancer, DistributedBalancer):
            self.balancer.finish_step(self.balancer.parameters())
        if train.grad_clip:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            norm = torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
            if logging:
                logged["grad_norm"] = float(norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        last_batch = batch
        self.balancer.after_step(lambda: self._recompute(last_batch))
        if logging:
            logged["lr"] = self.scheduler.get_last_lr()[0]
        return logged

    def _params_of(self, tasks: tuple[str, ...]) -> list[torch.nn.Parameter]:
        if tasks not in self._task_params:
            self._task_params[tasks] = self.model.all_task_parameters(list(tasks))
        return self._task_params[tasks]

    @torch.no_grad()
    def _recompute(self, batch: Mapping[str, tuple[Encoded, Tensor]]) -> dict[str, Tensor]:
        return self._forward(batch)

    # -- evaluation -------------------------------------------------------------------
    def _evaluate(self) -> bool:
        """Validate; remember the best weights. True when early stopping says stop."""
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
            if self.world.is_main:
                checkpoint.save_weights(self.model.state_dict(), self.run_dir / "best" /
                                        "model.safetensors")
        else:
            self.best["stale"] += 1
        patience = self.config.train.patience
        return patience is not None and self.best["stale"] >= patience

    # -- the run ----------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train, keep the best validation checkpoint, evaluate on test, write results.

        The run folder is locked for the whole call (see `polytask.train.run_dir`)."""
        with run_dir_guard.RunLock(self.run_dir, enabled=run_dir_guard.is_main_process()):
            self._check_run_dir()  # again: another process may have written it meanwhile
            return self._fit()

    def _resolve_baselines(self) -> dict[str, float | None]:
        """The single-task baselines `config.baselines` asks for: `auto` trains missing ones
        (every process takes part, as in training), `cached` reads recorded ones, `none`
        skips them. A baseline's own config says `none`, so this never recurses."""
        from polytask.train.baselines import cached_baselines, train_baselines

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
        self._write_start()
        self.log = MetricsLog(self.run_dir / "metrics.jsonl", append=self.continuing,
                              enabled=self.world.is_main)
        for callback in self.callbacks:
            callback.on_start(self.run_dir, self.config.dump())
        if self.continuing:
            self._restore()
        elif self.resume:
            self.console.print(f"no checkpoint in {self.run_dir} yet; starting from step 0",
                               highlight=False)
        train = self.config.train
        every = train.checkpoint_every or train.eval_every
        step_times: list[float] = []
        stopped_early = False
        show = train.progress and self.world.is_main
        with ProgressDisplay(train.max_steps, self.step, show, self.console,
                             train.log_every) as bar, \
                _StopRequest() as stop:
            while self.step < train.max_steps:
                tick = time.perf_counter()
                logged = self._train_step()
                step_times.append(time.perf_counter() - tick)
                self.step += 1
                if logged:
                    self._record({"step": self.step, "split": "train", **logged})
                bar.update(self.step, {k: v for k, v in logged.items() if k.startswith("loss/")})
                if self.step % train.eval_every == 0 or self.step == train.max_steps:
                    stopped_early = self._evaluate()
                # a signal to one process stops them all
                stop.requested = self.world.any(stop.requested, self.device)
                if self.step % every == 0 or stopped_early or stop.requested:
                    self._save_checkpoint()
                if stop.requested:
                    raise TrainingError(f"stopped by a signal at step {self.step}; checkpoint "
                                        f"written; continue with --resume")
                if stopped_early:
                    self.console.print(f"early stop at step {self.step}: no improvement in "
                                       f"{train.patience} evaluations")
                    break
        self.world.barrier()  # the first process has written the best weights
        if self.best["step"] is not None:
            best = checkpoint.load_weights_file(self.run_dir / "best" / "model.safetensors")
            self.model.load_state_dict(best)
        if self.world.is_main:
            save_model(self.run_dir / "model", self.model, self.data, self.backbone_spec,
                       self.encoder, self.config)
        test = evaluate(self.model, self.data, "test", train.eval_batch_size, self.device,
                        self.world)
        results = build_results(self.config, self.data, test, self.best, self.step,
                                self.baselines, stopped_early,
                                wall_time=time.perf_counter() - started,
                                step_time=float(np.median(step_times)) if step_times else None)
        self._record({"step": self.step, "split": "test",
                        **{f"{t}/{m}": v for t, ms in test.items() for m, v in ms.items()}})
        self.log.close()
        if self.world.is_main:
            write_json(self.run_dir / "results.json", results)
        for callback in self.callbacks:
            callback.on_end(self.run_dir, results)
        self.world.barrier()
        return results
