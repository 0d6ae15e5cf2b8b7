"""What a run shows and records while it trains: metrics.jsonl and a progress bar."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class MetricsLog:
    """Append-only JSON lines, one per logged event (train losses, evaluations)."""

    def __init__(self, path: Path, append: bool = False) -> None:
        self.path = path
        self.handle = path.open("a" if append else "w")

    def write(self, record: Mapping[str, Any]) -> None:
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()

    def truncate_after(self, step: int) -> None:
        """Drop records logged after `step` (a resumed run re-logs them identically)."""
        self.handle.close()
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))
        self.handle = self.path.open("a")

    def close(self) -> None:
        self.handle.close()


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
        text = "  ".join(f"{k.removeprefix('loss/')} {v:.3f}" for k, v in losses.items())
        self.progress.update(self.task, completed=step, losses=text)

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()
