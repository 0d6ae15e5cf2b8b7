"""`polytask bench`: a balancer × architecture × seed grid, resumable, with a leaderboard.

    >>> from polytask.bench import bench_config, run_bench
    >>> base = bench_config("census")                       # or a YAML config path
    >>> outcome = run_bench(base, ["ew", "pcgrad"], ["hard_sharing", "mmoe"], seeds=3,
    ...                     out="runs/bench/census")
    >>> outcome.leaderboard["methods"][0]["delta_m"]["mean"]

Layout of the output folder::
    OUT/cells/<architecture>/<balancer>/seed<k>/   one ordinary run dir per cell
    OUT/leaderboard.json  OUT/leaderboard.md        the aggregate (see evaluate.leaderboard)
    OUT/report.html  OUT/*.png                      the bench report

A cell whose run dir holds results.json is done and is not trained again; one with
checkpoints resumes from the newest (`Trainer(..., resume=True)`); one that died before its
first checkpoint starts over. A cell dir trained with other settings is an error (nothing is
overwritten). Single-task baselines come from the shared cache (`baselines_dir`, keyed by
the training settings and seed), so every cell of a seed, and later benches and `polytask
train` runs with the same settings, reuse them; missing ones are trained first (unless the
config says `baselines: none`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from polytask.balance import BALANCERS
from polytask.config import MethodConfig, RunConfig, load_config
from polytask.errors import ConfigError
from polytask.evaluate.leaderboard import build_leaderboard, leaderboard_markdown
from polytask.evaluate.report import write_bench_report
from polytask.files import atomic_write_text, read_yaml
from polytask.models.sharing import ARCHITECTURES
from polytask.pipeline import resolve
from polytask.suites import SUITES, load_suite
from polytask.tasks.sampling import SAMPLERS
from polytask.train.baselines import baseline_dir, cached_baselines, train_baselines
from polytask.train.checkpoint import list_checkpoints
from polytask.train.results import write_json
from polytask.train.run_dir import config_differences
from polytask.train.trainer import Trainer

__all__ = ["DEFAULT_ARCHITECTURES", "DEFAULT_BALANCERS", "BenchOutcome", "Cell",
           "bench_config", "plan", "run_bench"]

DEFAULT_BALANCERS = ["ew", "uw", "pcgrad", "mgda", "famo"]
DEFAULT_ARCHITECTURES = ["hard_sharing", "mmoe"]
DEFAULT_SEEDS = 3

#: What `polytask bench SUITE` changes on top of the suite's `recommended` training settings,
#: so that the default grid (5 balancers x 2 architectures x 3 seeds + baselines) runs in a
#: few minutes on a laptop CPU. Override any of it with --steps / --set.
SUITE_BENCH_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "census": {"suite": {"train_size": 5000, "eval_size": 2000},
               "train": {"max_steps": 400, "eval_every": 100}},
}


def _suite_dict(name: str) -> dict[str, Any]:
    if name not in SUITES:
        raise ConfigError(f"bench: {name!r} is neither a config file nor a built-in suite; "
                          f"{SUITES.unknown_message(name)}")
    defaults = SUITE_BENCH_DEFAULTS.get(name, {})
    suite_options = dict(defaults.get("suite", {}))
    recommended = dict(load_suite(name, **suite_options).recommended)
    return {"name": f"bench-{name}", "suite": {"name": name, **suite_options},
            "train": {**recommended, **defaults.get("train", {})}, "baselines": "auto"}


def bench_config(source: str | Path, steps: int | None = None,
                 overrides: Sequence[str] = ()) -> RunConfig:
    """The base config of a bench: a YAML config path, or a built-in suite name (its
    recommended settings, sized for benching; see `SUITE_BENCH_DEFAULTS`).

    `steps` sets train.max_steps (and lowers eval_every to at most steps/5 so the curves
    have points); `overrides` are `--set` items applied last. Progress bars are off."""
    path = Path(source)
    if path.suffix.lower() in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    else:
        data = _suite_dict(str(source))
    train = dict(data.get("train") or {})
    if steps is not None:
        if steps <= 0:
            raise ConfigError(f"--steps: must be a positive number of steps (got {steps})")
        train["max_steps"] = steps
        train["eval_every"] = min(int(train.get("eval_every", 100)), max(1, steps // 5))
    train["progress"] = False
    data["train"] = train
    # relative data paths in a config file are read against its folder, as in `train`
    return load_config(data, overrides, base_dir=path.absolute().parent
                       if path.suffix.lower() in (".yaml", ".yml") or path.exists() else None)


@dataclass
class Cell:
    """One run of the grid."""

    balancer: str
    architecture: str
    seed: int
    config: RunConfig
    path: str  # relative to the bench folder

    @property
    def label(self) -> str:
        return f"{self.balancer} · {self.architecture} · seed {self.seed}"


@dataclass
class BenchOutcome:
    leaderboard: dict[str, Any]
    trained: int = 0
    resumed: int = 0
    cached: int = 0
    baselines_trained: int = 0
    files: dict[str, Path] = field(default_factory=dict)


def _with_seed(config: RunConfig, seed: int) -> RunConfig:
    """`config` with another training seed; `train.split_seed` stays, so every seed is scored
    on the same carved test rows."""
    return config.model_copy(update={"train": config.train.model_copy(update={"seed": seed})})


def _split_names(value: str | Sequence[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return list(dict.fromkeys(i.strip() for i in items if i.strip()))


def plan(base: RunConfig, balancers: str | Sequence[str], architectures: str | Sequence[str],
         seeds: int | Sequence[int]) -> list[Cell]:
    """The cells of the grid (architecture-major), checked before any training.

    `seeds` is a count (seeds base.train.seed, +1, ...) or explicit seeds. A balancer or
    architecture named in the base config keeps the hyperparameters given there."""
    balancer_names = _split_names(balancers)
    architecture_names = _split_names(architectures)
    if not balancer_names or not architecture_names:
        raise ConfigError("bench: give at least one balancer and one architecture")
    for name in balancer_names:
        if name not in BALANCERS:
            raise ConfigError(f"--balancers: {BALANCERS.unknown_message(name)}")
        if (BALANCERS.get(name).needs_all_tasks
                and not SAMPLERS.get(base.sampler.name).feeds_all_tasks):
            raise ConfigError(
                f"--balancers: {name!r} needs every task at every step, but the config's "
                f"sampler {base.sampler.name!r} feeds one task per step; set --set sampler=all "
                "or bench loss weightings only")
    for name in architecture_names:
        if name not in ARCHITECTURES:
            raise ConfigError(f"--architectures: {ARCHITECTURES.unknown_message(name)}")
    if isinstance(seeds, int):
        if seeds <= 0:
            raise ConfigError(f"--seeds: must be at least 1 (got {seeds})")
        seed_list = [base.train.seed + i for i in range(seeds)]
    else:
        seed_list = list(dict.fromkeys(int(s) for s in seeds))
    cells = []
    for architecture in architecture_names:
        arch = (base.model.architecture if base.model.architecture.name == architecture
                else MethodConfig(name=architecture))
        model = base.model.model_copy(update={"architecture": arch})
        for balancer in balancer_names:
            method = (base.balancer if base.balancer.name == balancer
                      else MethodConfig(name=balancer))
            for seed in seed_list:
                config = _with_seed(base, seed).model_copy(update={
                    "balancer": method, "model": model,
                    "name": f"{balancer}-{architecture}-seed{seed}"})
                cells.append(Cell(balancer, architecture, seed, config,
                                  f"cells/{architecture}/{balancer}/seed{seed}"))
    return cells


def _check_same_settings(cell: Cell, run_dir: Path) -> None:
    changes = config_differences(run_dir, cell.config.dump())
    if changes:
        shown = ", ".join(f"{k}: {old!r} -> {new!r}"
                          for k, (old, new) in list(changes.items())[:4])
        raise ConfigError(
            f"bench: {run_dir} was trained with other settings ({shown}"
            f"{', ...' if len(changes) > 4 else ''}); pass another --out, or delete that "
            "folder to retrain it (nothing was overwritten)")


def _split_note(runs: Sequence[Mapping[str, Any]], split_seed: int) -> str:
    """Where the validation/test rows of the table come from."""
    carved = sorted({split for run in runs
                     for source in (run.get("splits") or {}).get("sources", {}).values()
                     for split in source.get("carved", [])})
    if not carved:
        return "Splits: as the dataset gives them, the same for every seed."
    return (f"Splits: {' and '.join(carved)} carved from train with train.split_seed "
            f"{split_seed}, fixed across seeds, so ± is the spread over training seeds only.")


def _baselines_wall_time(base: RunConfig, seeds: Sequence[int]) -> float | None:
    """Total wall time of the single-task baselines the bench compares against."""
    if base.baselines == "none":
        return None
    total = 0.0
    for seed in seeds:
        seeded = _with_seed(base, seed)
        for task in resolve(seeded).tasks:
            path = baseline_dir(seeded, task.name) / "results.json"
            if path.exists():
                total += json.loads(path.read_text()).get("wall_time_s") or 0.0
    return round(total, 1)


def run_bench(base: RunConfig, balancers: str | Sequence[str] = DEFAULT_BALANCERS,
              architectures: str | Sequence[str] = DEFAULT_ARCHITECTURES,
              seeds: int | Sequence[int] = DEFAULT_SEEDS, out: str | Path = "runs/bench",
              console: Console | None = None, source: str | None = None,
              command: str | None = None, report: bool = True) -> BenchOutcome:
    """Run (or finish) the grid and write leaderboard.json, leaderboard.md and the report."""
    console = console or Console(stderr=True)
    started = time.perf_counter()
    out = Path(out)
    cells = plan(base, balancers, architectures, seeds)
    for cell in cells:  # fail on a stale folder before any training
        _check_same_settings(cell, out / cell.path)
    outcome = BenchOutcome(leaderboard={})
    baselines: dict[int, dict[str, float | None]] = {}
    total = len(cells)
    for index, cell in enumerate(cells, 1):
        run_dir = out / cell.path
        prefix = f"[{index}/{total}] {cell.label}"
        if (run_dir / "results.json").exists():
            outcome.cached += 1
            console.print(f"{prefix}: done (cached)", highlight=False)
            continue
        if cell.seed not in baselines:
            seeded = _with_seed(base, cell.seed)
            if base.baselines == "none":
                baselines[cell.seed] = {}
            else:
                values = cached_baselines(seeded)
                missing = [t for t, v in values.items() if v is None]
                if missing:
                    outcome.baselines_trained += len(missing)
                    console.print(f"single-task baselines for seed {cell.seed}: training "
                                  f"{', '.join(missing)}", highlight=False)
                    values = train_baselines(seeded, console)
                baselines[cell.seed] = values
        resume = bool(list_checkpoints(run_dir / "checkpoints"))
        tick = time.perf_counter()
        # a cell that died before its first checkpoint starts over from step 0 (resume=True
        # without a checkpoint); a folder that is not a run is refused, never deleted
        results = Trainer(cell.config, run_dir, resume=run_dir.exists(), console=console,
                          baselines=baselines[cell.seed]).fit()
        if resume:
            outcome.resumed += 1
        else:
            outcome.trained += 1
        delta = results.get("delta_m")
        console.print(f"{prefix}: {'resumed and finished' if resume else 'trained'} in "
                      f"{time.perf_counter() - tick:.1f}s, Δm% "
                      f"{'–' if delta is None else f'{delta:+.2f}'}", highlight=False)

    runs = []
    for cell in cells:
        document = json.loads((out / cell.path / "results.json").read_text())
        runs.append({**document, "run_dir": cell.path})
    board = build_leaderboard(runs)
    suite = base.suite.options if base.suite else {}
    board["bench"] = {
        "source": source or base.name or "config", "command": command,
        "balancers": _split_names(balancers), "architectures": _split_names(architectures),
        "seeds": board["seeds"], "steps": base.train.max_steps,
        "batch_size": base.train.batch_size, "lr": base.train.lr,
        "train_size": suite.get("train_size"), "split_seed": base.train.split_seed,
        "cells_wall_time_s": round(sum(r.get("wall_time_s") or 0 for r in runs), 1),
        "baselines_wall_time_s": _baselines_wall_time(base, board["seeds"]),
        "last_invocation": {
            "wall_time_s": round(time.perf_counter() - started, 1), "trained": outcome.trained,
            "resumed": outcome.resumed, "cached": outcome.cached,
            "baselines_trained": outcome.baselines_trained},
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "leaderboard.json", board)
    notes = [f"Command: `{command}`" if command else "",
             f"Settings: {base.train.max_steps} steps, batch {base.train.batch_size} per task, "
             f"lr {base.train.lr}" + (f", suite options {suite}" if suite else "") + ".",
             _split_note(runs, base.train.split_seed)]
    title = f"Leaderboard · {board['bench']['source']}"
    atomic_write_text(out / "leaderboard.md",
                      leaderboard_markdown(board, title, [n for n in notes if n]))
    outcome.files = {"leaderboard.json": out / "leaderboard.json",
                     "leaderboard.md": out / "leaderboard.md"}
    if report:
        outcome.files["report.html"] = write_bench_report(out)
    outcome.leaderboard = board
    return outcome
