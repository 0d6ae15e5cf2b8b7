"""What a run shows and records while it trains: metrics.jsonl, progress (a bar on a
terminal, plain lines in a log file), and pluggable callbacks (loggers such as TensorBoard
or MLflow, the end-of-run report).

A callback is registered in `CALLBACKS` and named in the config (`train.callbacks`); the
trainer calls `on_start` once, `on_log` with every record it writes to metrics.jsonl, and
`on_end` with the results once the run is finished."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
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

from polytask.registry import Registry


class Callback:
    """Hooks into a run. Records use stable names: `loss/<task>`, `weight/<task>`, `lr`,
    `cosine/<task>/<task>` (train), `<task>/<metric>` (validation and test), with `step`
    and `split` keys."""

    def on_start(self, run_dir: Path, config: Mapping[str, Any]) -> None:
        """The run starts (or resumes) writing into `run_dir`."""

    def on_log(self, record: Mapping[str, Any]) -> None:
        """A record was appended to metrics.jsonl."""

    def on_end(self, run_dir: Path, results: Mapping[str, Any]) -> None:
        """The run finished and wrote `results`."""


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
        self.path.write_text("".join(line + "\n" for line in kept))
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
    `step 40/300 (13%) · 2.1 it/s · ETA 0:02:04 · loss income 0.412 never_married 0.388`."""

    def __init__(self, total: int, start: int, enabled: bool, console: Console,
                 every: int = 10) -> None:
        self.enabled = enabled
        self.total, self.start, self.every = total, start, every
        self.console = console
        self.terminal = console.is_terminal
        self.losses: Mapping[str, float] = {}
        self.started = time.perf_counter()
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
        if losses:
            self.losses = dict(losses)
            self.progress.losses = Text(f"loss {_loss_text(losses)}", no_wrap=True,
                                        overflow="ellipsis", style="dim")
        self.progress.update(self.task, completed=step)
        if self.enabled and not self.terminal and (step % self.every == 0 or step == self.total):
            self.console.print(self.line(step), soft_wrap=True, markup=False, highlight=False)
            self.console.file.flush()

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


# The built-in callbacks (report, tensorboard, mlflow) register themselves on import; they
# import their heavy dependencies only when used.
from polytask.train import loggers  # noqa: E402, F401
