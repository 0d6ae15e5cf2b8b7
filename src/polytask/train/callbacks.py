"""What a run shows and records while it trains: metrics.jsonl, a progress bar, and
pluggable callbacks (loggers such as TensorBoard or MLflow, the end-of-run report).

A callback is registered in `CALLBACKS` and named in the config (`train.callbacks`); the
trainer calls `on_start` once, `on_log` with every record it writes to metrics.jsonl, and
`on_end` with the results once the run is finished."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

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


class ProgressDisplay:
    """A rich progress bar with the latest per-task losses (silent when disabled)."""

    def __init__(self, total: int, start: int, enabled: bool, console: Console) -> None:
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[losses]}"),
            console=console, transient=False, disable=not enabled,
        )
        self.task = self.progress.add_task("train", total=total, completed=start, losses="")

    def __enter__(self) -> ProgressDisplay:
        self.progress.start()
        return self

    def update(self, step: int, losses: Mapping[str, float]) -> None:
        """Advance to `step`; show `losses` when given (the last ones shown stay)."""
        if losses:
            text = "  ".join(f"{k.removeprefix('loss/')} {v:.3f}" for k, v in losses.items())
            self.progress.update(self.task, completed=step, losses=text)
        else:
            self.progress.update(self.task, completed=step)

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


# The built-in callbacks (report, tensorboard, mlflow) register themselves on import; they
# import their heavy dependencies only when used.
from polytask.train import loggers  # noqa: E402, F401
