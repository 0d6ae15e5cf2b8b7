"""What a run shows and records while it trains: metrics.jsonl, progress (a bar on a
terminal, plain lines in a log file), and callbacks.

A callback is an object with any of the `Callback` events; pass objects to
`Trainer(..., callbacks=[...])`, or register a class in `CALLBACKS` and name it in the
config (`train.callbacks`). The trainer calls, in order:

    on_train_begin                          once, after setup (and after a resume)
    per optimizer step:
      on_step_begin
      on_step_end(step)                     `StepResult`: model, last batch, losses,
                                            the balancer's result
      on_log(record)                        a record appended to metrics.jsonl
      on_evaluate(metrics)                  after a validation pass (then on_log again)
      on_save(checkpoint)                   after a checkpoint is written
    on_log(test record), on_train_end(results)   once the run has finished

Every event receives the `TrainerState` (step, epoch per task, latest metrics, best so
far) and the `TrainerControl`, whose flags a callback sets to stop the run cleanly
(checkpoint and results.json are still written), to evaluate now or to save a checkpoint
now. Under torchrun, objects passed to the Trainer run on every process and the
registered ones only on the main one; the flags are agreed across processes after each
step (one process asking is enough).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from torch import Tensor

from polytask.balance import BalanceResult
from polytask.files import atomic_write_text
from polytask.models.adapters import Adapter
from polytask.models.inputs import Encoded
from polytask.models.model import ModelOutput, MultiTaskModel
from polytask.models.sharing import SharingArchitecture
from polytask.registry import Registry


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record as `{stable name: value}` (finite numbers only).

    Train keys keep their names (`loss/<task>`, `weight/<task>`, `lr`, ...); evaluation keys
    get the split as a prefix (`validation/<task>/<metric>`, `test/<task>/<metric>`).
    """
    split = record.get("split", "train")
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in ("step", "split") or isinstance(value, bool) or not isinstance(
                value, int | float) or not math.isfinite(value):
            continue
        out[key if split == "train" else f"{split}/{key}"] = float(value)
    return out


@dataclass
class TrainerState:
    """Where the run stands, as every callback event sees it (read it; do not change it).

    `step`: optimizer steps done. `max_steps`: `train.max_steps`. `metrics`: the latest
    value of every logged name (`loss/<task>`, `validation/<task>/<metric>`, ...; see
    `scalars`). `best`: the best validation so far (`score`, `step`, `validation` metrics).
    `run_dir`, `config`: the run folder and the config as plain data. `epoch`: per task,
    the passes made over its training rows (e.g. 2.5).
    """

    max_steps: int
    run_dir: Path
    config: Mapping[str, Any]
    best: Mapping[str, Any]
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    epochs: Callable[[], dict[str, float]] = field(default=dict, repr=False)

    @property
    def epoch(self) -> dict[str, float]:
        """Per task, the passes made over its training rows (computed when asked)."""
        return self.epochs()


@dataclass
class TrainerControl:
    """Flags a callback sets to steer the run; the trainer clears each once acted on.

    `should_stop`: checkpoint, evaluate on test, write results.json and return, after this
    step. `should_evaluate`: run a validation pass after this step. `should_save`: write a
    checkpoint after this step."""

    should_stop: bool = False
    should_evaluate: bool = False
    should_save: bool = False


@dataclass
class StepResult:
    """What `on_step_end` sees of the step just taken (its last micro-batch under
    `train.grad_accum`): the model after the optimizer step, the batch `{task: (inputs,
    labels)}` (inputs on the CPU), the model's output and per-task losses before the step
    (their graph already spent by the backward: read their values), and `balancer_result`,
    the engine's `polytask.balance.BalanceResult`, not a weights dict: `.weights` holds the
    task weights applied (`{task: weight}`, empty for an aggregator that is no weighted sum)
    and `.gramian` the Gramian of the task gradients (on logging steps, for methods that see
    them; None otherwise). `logged`: what the step logs (empty except on
    logging steps). A batch skipped for a non-finite loss has empty `losses`, no `output`
    and (with no other micro-batch) no `balancer_result`."""

    model: MultiTaskModel
    batch: Mapping[str, tuple[Encoded, Tensor]]
    losses: Mapping[str, Tensor]
    output: ModelOutput | None
    balancer_result: BalanceResult | None
    logged: Mapping[str, float]


class Callback:
    """Hooks into a run; override the events you need (each does nothing by default).

    Records use stable names: `loss/<task>`, `weight/<task>`, `lr`, `cosine/<task>/<task>`
    (train), `<task>/<metric>` (validation and test), with `step` and `split` keys."""

    def on_train_begin(self, state: TrainerState, control: TrainerControl) -> None:
        """The run starts (or resumes) writing into `state.run_dir`."""

    def on_step_begin(self, state: TrainerState, control: TrainerControl) -> None:
        """Optimizer step `state.step + 1` is about to run."""

    def on_step_end(self, state: TrainerState, control: TrainerControl,
                    step: StepResult) -> None:
        """Optimizer step `state.step` was taken."""

    def on_log(self, state: TrainerState, control: TrainerControl,
               record: Mapping[str, Any]) -> None:
        """`record` was appended to metrics.jsonl."""

    def on_evaluate(self, state: TrainerState, control: TrainerControl,
                    metrics: Mapping[str, Mapping[str, float]]) -> None:
        """A validation pass ended: `{task: {metric: value}}`; `state.best` is updated."""

    def on_save(self, state: TrainerState, control: TrainerControl, checkpoint: Path) -> None:
        """Checkpoint `checkpoint` (a folder) of step `state.step` was written."""

    def on_train_end(self, state: TrainerState, control: TrainerControl,
                     results: Mapping[str, Any]) -> None:
        """The run finished and wrote `results` (results.json)."""


class ArchitectureSchedule(Callback):
    """Runs the sharing architecture's schedule before each step (e.g. Learning to Branch
    anneals its temperature, then fixes its tree) and calls `on_split_change` when the
    shared / task-specific parameter split changed. The trainer adds it, first, for
    architectures that override `SharingArchitecture.before_step`."""

    def __init__(self, architecture: SharingArchitecture | Adapter,
                 on_split_change: Callable[[], None]) -> None:
        self.architecture = architecture
        self.on_split_change = on_split_change

    @staticmethod
    def wanted(architecture: SharingArchitecture | Adapter) -> bool:
        """True when `architecture` (or a multi-task adapter) has a schedule to follow."""
        base = Adapter if isinstance(architecture, Adapter) else SharingArchitecture
        return type(architecture).before_step is not base.before_step

    def on_step_begin(self, state: TrainerState, control: TrainerControl) -> None:
        if self.architecture.before_step(state.step, state.max_steps):
            self.on_split_change()


CALLBACKS: Registry[type[Callback]] = Registry("callback")


class MetricsLog:
    """Append-only JSON lines, one per logged event (train losses, evaluations)."""

    def __init__(self, path: Path, append: bool = False, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled  # False on every process but the first under torchrun
        self.handle = path.open("a" if append else "w") if enabled else None

    def write(self, record: Mapping[str, Any]) -> None:
        if self.handle is not None:
            self.handle.write(json.dumps(record) + "\n")
            self.handle.flush()

    def truncate_after(self, step: int) -> None:
        """Drop records logged after `step` (a resumed run re-logs them identically)."""
        if self.handle is None:
            return
        self.handle.close()
        kept = [line for line in self.path.read_text().splitlines()
                if _complete(line) and json.loads(line).get("step", 0) <= step]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self.handle = self.path.open("a")

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def _complete(line: str) -> bool:
    """False for a blank line or one cut short by a crash mid-write."""
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return bool(line.strip())


class _BarWithLosses(Progress):
    """A progress bar whose latest losses sit on their own line below it, cut to the
    terminal width with an ellipsis, so they never push the step count or the ETA off."""

    def __init__(self, *columns: ProgressColumn, **options: Any) -> None:
        self.losses = Text()  # set first: the base class may render while it starts
        super().__init__(*columns, **options)

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if self.losses:
            yield self.losses


def _loss_text(losses: Mapping[str, float]) -> str:
    return " ".join(f"{k.removeprefix('loss/')} {v:.3f}" for k, v in losses.items())


class ProgressDisplay:
    """Training progress, silent when disabled. On a terminal: a rich bar (step, M/N, ETA)
    with the latest per-task losses on the line below it. Otherwise (output to a file or a
    pipe): one plain line every `every` steps and at the last step, e.g.
    `step 40/300 (13%) · 2.1 it/s · ETA 0:02:04 · loss income 0.412 never_married 0.388`.
    The bar's step count is handed over at most every `REDRAW` seconds (and with new
    losses, and at the end): a step costs no more than the bar can show."""

    #: The bar redraws ten times a second; moving its count more often is wasted work.
    REDRAW = 0.1

    def __init__(self, total: int, start: int, enabled: bool, console: Console,
                 every: int = 10) -> None:
        self.enabled = enabled
        self.total, self.start, self.every = total, start, every
        self.console = console
        self.terminal = console.is_terminal
        self.losses: Mapping[str, float] = {}
        self.started = time.perf_counter()
        self._step, self._handed_over = start, 0.0  # the bar's latest step, and when given
        self.progress = _BarWithLosses(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=console, transient=False, disable=not (enabled and self.terminal),
        )
        self.task = self.progress.add_task("train", total=total, completed=start)

    def __enter__(self) -> ProgressDisplay:
        self.started = time.perf_counter()
        self.progress.start()
        return self

    def update(self, step: int, losses: Mapping[str, float]) -> None:
        """Advance to `step`; show `losses` when given (the last ones shown stay)."""
        if not self.enabled:
            return
        if losses:
            self.losses = dict(losses)
        if self.terminal:
            self._move_bar(step, losses)
        elif step % self.every == 0 or step == self.total:
            self.console.print(self.line(step), soft_wrap=True, markup=False, highlight=False)
            self.console.file.flush()

    def _move_bar(self, step: int, losses: Mapping[str, float]) -> None:
        """Hand `step` (and `losses`) to the bar, unless it was given one under `REDRAW`
        seconds ago and there is nothing new to show."""
        self._step = step
        now = time.perf_counter()
        if not losses and step != self.total and now - self._handed_over < self.REDRAW:
            return
        self._handed_over = now
        if losses:
            self.progress.losses = Text(f"loss {_loss_text(losses)}", no_wrap=True,
                                        overflow="ellipsis", style="dim")
        self.progress.update(self.task, completed=step)

    def line(self, step: int) -> str:
        """The plain progress line printed when output is not a terminal."""
        elapsed = time.perf_counter() - self.started
        rate = (step - self.start) / elapsed if elapsed > 0 else 0.0
        eta = timedelta(seconds=round((self.total - step) / rate)) if rate > 0 else "?"
        parts = [f"step {step}/{self.total} ({step / self.total:.0%})", f"{rate:.1f} it/s",
                 f"ETA {eta}"]
        if self.losses:
            parts.append(f"loss {_loss_text(self.losses)}")
        return " · ".join(parts)

    def __exit__(self, *exc: object) -> None:
        if self.enabled and self.terminal:
            self.progress.update(self.task, completed=self._step)  # a step held back
        self.progress.stop()


@contextmanager
def loading_status(console: Console, enabled: bool) -> Iterator[None]:
    """While the data and model load (tokenizing, embedding: can take a minute): a spinner
    on a terminal, one plain line otherwise; nothing when disabled."""
    message = "loading data and model..."
    if not enabled:
        yield
    elif console.is_terminal:
        with console.status(message):
            yield
    else:
        console.print(message, markup=False, highlight=False)
        console.file.flush()
        yield
