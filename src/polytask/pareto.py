"""Preferences for a palora run: parse `--preference`, trace the Pareto front (`--pareto K`).

A palora model (Pareto Low-Rank Adapters) is conditioned on a preference vector over its
tasks. `trace_pareto` evaluates the run's final model at K preference vectors spread over the
simplex and writes them with each task's metrics to `RUN_DIR/pareto.json`, which
`polytask report` plots as the front.
"""

from __future__ import annotations

import itertools
import json
from math import comb
from pathlib import Path
from typing import Any

from rich.console import Console

from polytask.config import RunConfig
from polytask.errors import ConfigError
from polytask.files import atomic_write_text, read_yaml
from polytask.inference import prepare_run
from polytask.models.adapters import ADAPTERS
from polytask.models.adapters.base import apply_preference

#: The file `trace_pareto` writes into the run directory.
PARETO_FILE = "pareto.json"


def parse_preference(text: str, field: str = "--preference") -> list[float]:
    """'0.3,0.7' -> [0.3, 0.7] (the length and signs are checked against the run later)."""
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"{field}: {text!r} is not a comma-separated list of numbers; give "
                          "one weight per task in the run's task order, e.g. 0.3,0.7") from None


def simplex_points(count: int, tasks: int) -> list[list[float]]:
    """`count` preference vectors spread over the simplex of `tasks` weights: points of the
    simplex lattice (weights in steps of 1/H) for the smallest H that has at least `count`
    of them, `count` of them picked evenly in lattice order (the first and last are
    single-task preferences). Two tasks: `count` evenly spaced weights, (0, 1) to (1, 0)."""
    divisions = 1
    while comb(divisions + tasks - 1, tasks - 1) < count:
        divisions += 1
    lattice = [
        [(b - a - 1) / divisions for a, b in zip((-1, *bars), (*bars, divisions + tasks - 1),
                                                 strict=True)]
        for bars in itertools.combinations(range(divisions + tasks - 1), tasks - 1)
    ]
    picks = [round(i * (len(lattice) - 1) / max(count - 1, 1)) for i in range(count)]
    return [lattice[i] for i in picks]


def trace_pareto(run_dir: str | Path, count: int, split: str = "test",
                 allow_data_change: bool = False,
                 console: Console | None = None) -> dict[str, Any]:
    """Evaluate a palora run at `count` preferences on the simplex; write and return the
    points ({preference, metrics}) with each task's primary metric, in `pareto.json`."""
    run_dir = Path(run_dir)
    if count < 2:
        raise ConfigError(f"--pareto: {count} point(s); give at least 2 preference vectors "
                          "to trace the front, e.g. --pareto 11")
    _require_preference_conditioned(run_dir)
    run = prepare_run(run_dir, allow_data_change, console)
    tasks = [task.name for task in run.data.tasks]
    points = []
    for preference in simplex_points(count, len(tasks)):
        apply_preference(run.model.adapter, preference, "--pareto")
        points.append({"preference": dict(zip(tasks, preference, strict=True)),
                       "metrics": run.evaluate(split)})
    kinds = run.data.kinds
    front = {
        "split": split,
        "tasks": {t: {"metric": kinds[t].metric, "higher_is_better": kinds[t].higher_is_better}
                  for t in tasks},
        "points": points,
    }
    atomic_write_text(run_dir / PARETO_FILE, json.dumps(front, indent=1) + "\n")
    return front


def _require_preference_conditioned(run_dir: Path) -> None:
    """Refuse a run without a preference-conditioned adapter, before any data is loaded."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"--pareto: {run_dir} has no config.yaml; is it a finished run?")
    adapter = RunConfig.model_validate(read_yaml(path)).model.adapter
    if adapter is None or not ADAPTERS.get(adapter.name).preference_conditioned:
        has = f"adapter {adapter.name!r}" if adapter is not None else "no adapter"
        raise ConfigError(f"--pareto: only a run trained with a preference-conditioned "
                          f"adapter (model.adapter: palora) has a front to trace; {run_dir} "
                          f"has {has}")


def front_rows(front: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The header and rows of a table of the front: each point's preference and each task's
    primary metric."""
    tasks = list(front["tasks"])
    header = [f"λ {t}" for t in tasks] + [f"{t} {front['tasks'][t]['metric']}" for t in tasks]
    rows = [[f"{point['preference'][t]:.3f}" for t in tasks]
            + [f"{point['metrics'][t][front['tasks'][t]['metric']]:.4f}" for t in tasks]
            for point in front["points"]]
    return header, rows
