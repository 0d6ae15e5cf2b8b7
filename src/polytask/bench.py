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

`run_grouping_bench` validates task groups (a `polytask affinity` groups.json): one run per
group per seed (OUT/groups/<tasks>/seed<k>), all tasks together (OUT/together/seed<k>) and
the single-task baselines, in one leaderboard whose rows are strategies.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from polytask.balance import BALANCERS
from polytask.config import MethodConfig, RunConfig, load_config
from polytask.errors import ConfigError
from polytask.evaluate.delta import relative_change
from polytask.evaluate.leaderboard import build_leaderboard, leaderboard_markdown, stats
from polytask.evaluate.report import write_bench_report
from polytask.files import atomic_write_text, read_yaml
from polytask.models.inputs import content_hash
from polytask.models.sharing import ARCHITECTURES
from polytask.pipeline import resolve
from polytask.suites import SUITES, load_suite
from polytask.tasks.sampling import SAMPLERS
from polytask.train.baselines import baseline_dir, cached_baselines
from polytask.train.checkpoint import list_checkpoints
from polytask.train.results import write_json
from polytask.train.run_dir import config_differences
from polytask.train.trainer import Trainer, train_baselines

__all__ = ["DEFAULT_ARCHITECTURES", "DEFAULT_BALANCERS", "BenchOutcome", "Cell", "Strategy",
           "bench_config", "grouping_change_table", "plan", "read_grouping", "run_bench",
           "run_grouping_bench"]

DEFAULT_BALANCERS = ["ew", "uw", "pcgrad", "mgda", "famo"]
DEFAULT_ARCHITECTURES = ["hard_sharing", "mmoe"]
DEFAULT_SEEDS = 3

#: What `polytask bench SUITE` changes on top of the suite's `recommended` training settings,
#: so that the default grid (5 balancers x 2 architectures x 3 seeds + baselines) runs in a
#: few minutes on a laptop CPU. Override any of it with --steps / --set.
SUITE_BENCH_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "census": {"suite": {"train_size": 5000, "eval_size": 2000},
               "train": {"max_steps": 400, "eval_every": 100}},
    # LeNet steps of batch 256 take about 0.05-0.1 s on one core (ew / gradient methods)
    "multimnist": {"suite": {"train_size": 6000, "eval_size": 1000},
                   "train": {"max_steps": 300, "eval_every": 100}},
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
    title: str | None = None  # what the progress lines call it (default: balancer · arch)

    @property
    def label(self) -> str:
        return f"{self.title or f'{self.balancer} · {self.architecture}'} · seed {self.seed}"


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


def _train_cells(base: RunConfig, cells: Sequence[Cell], out: Path,
                 console: Console) -> BenchOutcome:
    """Train every cell not done yet (resuming interrupted ones), each against its seed's
    single-task baselines (trained first where missing); an outcome with the counts."""
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
    return outcome


def _bench_facts(base: RunConfig, source: str | None, command: str | None,
                 runs: Sequence[Mapping[str, Any]], seeds: Sequence[int], started: float,
                 outcome: BenchOutcome) -> dict[str, Any]:
    """What leaderboard.json's `bench` section says of the settings and the invocation."""
    suite = base.suite.options if base.suite else {}
    return {
        "source": source or base.name or "config", "command": command,
        "seeds": list(seeds), "steps": base.train.max_steps,
        "batch_size": base.train.batch_size, "lr": base.train.lr,
        "train_size": suite.get("train_size"), "split_seed": base.train.split_seed,
        "cells_wall_time_s": round(sum(r.get("wall_time_s") or 0 for r in runs), 1),
        "baselines_wall_time_s": _baselines_wall_time(base, seeds),
        "last_invocation": {
            "wall_time_s": round(time.perf_counter() - started, 1), "trained": outcome.trained,
            "resumed": outcome.resumed, "cached": outcome.cached,
            "baselines_trained": outcome.baselines_trained},
    }


def _write_board(out: Path, board: dict[str, Any], base: RunConfig,
                 runs: Sequence[Mapping[str, Any]], command: str | None, report: bool,
                 outcome: BenchOutcome, notes: Sequence[str] = ()) -> None:
    """Write leaderboard.json, leaderboard.md (with `notes`) and report.html into `out`."""
    suite = base.suite.options if base.suite else {}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "leaderboard.json", board)
    lines = [f"Command: `{command}`" if command else "",
             f"Settings: {base.train.max_steps} steps, batch {base.train.batch_size} per task, "
             f"lr {base.train.lr}" + (f", suite options {suite}" if suite else "") + ".",
             _split_note(runs, base.train.split_seed), *notes]
    title = f"Leaderboard · {board['bench']['source']}"
    atomic_write_text(out / "leaderboard.md",
                      leaderboard_markdown(board, title, [n for n in lines if n]))
    outcome.files = {"leaderboard.json": out / "leaderboard.json",
                     "leaderboard.md": out / "leaderboard.md"}
    if report:
        outcome.files["report.html"] = write_bench_report(out)


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
    outcome = _train_cells(base, cells, out, console)
    runs = []
    for cell in cells:
        document = json.loads((out / cell.path / "results.json").read_text())
        runs.append({**document, "run_dir": cell.path})
    board = build_leaderboard(runs)
    board["bench"] = {
        **_bench_facts(base, source, command, runs, board["seeds"], started, outcome),
        "balancers": _split_names(balancers), "architectures": _split_names(architectures)}
    _write_board(out, board, base, runs, command, report, outcome)
    outcome.leaderboard = board
    return outcome


# --------------------------------------------------------------------------- grouping


@dataclass
class Strategy:
    """A row of a grouping leaderboard: the tasks split into groups, one run per group."""

    label: str
    groups: list[list[str]]


def _read_groups_file(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--grouping: {str(path)!r} does not exist; write one with "
                          "`polytask affinity CONFIG --groups K`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"--grouping: {str(path)!r} is not a readable JSON file ({error}); "
                          "pass the groups.json that `polytask affinity` wrote") from None
    if not isinstance(document, dict) or not isinstance(document.get("methods"), dict):
        raise ConfigError(f"--grouping: {str(path)!r} has no `methods` section; pass the "
                          "groups.json that `polytask affinity` wrote")
    return document


def read_grouping(path: str | Path, tasks: Sequence[str], methods: str | Sequence[str] | None
                  = None, groups: int | None = None) -> list[Strategy]:
    """The partitions to bench from a `polytask affinity` groups.json: for each chosen method
    (default: every one in the file), its best partition into `groups` groups (default: the
    largest k in the file). Methods that chose the same partition share one strategy.

    Raises:
        ConfigError: an unreadable file, an unknown method or k, or a partition that does not
            cover exactly `tasks` (a groups.json made for other tasks).
    """
    path = Path(path)
    document = _read_groups_file(path)
    available = document["methods"]
    chosen = _split_names(methods) if methods is not None else list(available)
    strategies: dict[str, Strategy] = {}
    for method in chosen:
        if method not in available:
            raise ConfigError(f"--grouping-method: {method!r} is not in {path} (it has "
                              f"{', '.join(available) or 'no methods'})")
        by_count = available[method].get("by_count") or {}
        k = groups if groups is not None else max((int(c) for c in by_count), default=0)
        entry = by_count.get(str(k))
        if entry is None:
            raise ConfigError(f"--groups: {path} has no {k}-group partition for {method} (it "
                              f"has k = {', '.join(by_count) or 'none'}); pick one of those")
        partition = [list(group) for group in entry["groups"]]
        covered = {task for group in partition for task in group}
        if covered != set(tasks):
            raise ConfigError(
                f"--grouping: the {method} groups in {path} cover {sorted(covered)}, but the "
                f"config trains {sorted(tasks)}; pass the groups.json made for this config")
        key = json.dumps(sorted(sorted(group) for group in partition))
        if key in strategies:
            strategies[key].label = strategies[key].label.replace(" (k=", f", {method} (k=")
        else:
            strategies[key] = Strategy(f"grouped: {method} (k={k})", partition)
    return list(strategies.values())


def _group_folder(group: Sequence[str]) -> str:
    """The folder of a group's runs: its task names joined, or a digest when that is long."""
    joined = "+".join(group)
    if len(joined) <= 80:
        return f"groups/{joined}"
    return f"groups/{group[0]}+{len(group) - 1}-more-{content_hash(sorted(group))[:10]}"


def _grouping_cells(base: RunConfig, strategies: Sequence[Strategy],
                    seeds: Sequence[int]) -> tuple[list[Cell], dict[tuple[str, ...], str]]:
    """One cell per distinct group per seed, and one all-tasks-together cell per seed; and
    the folder of each group (by its sorted tasks)."""
    architecture = base.model.architecture.name
    folders: dict[tuple[str, ...], str] = {}
    for strategy in strategies:
        for group in strategy.groups:
            folders.setdefault(tuple(sorted(group)), _group_folder(group))
    cells = []
    for seed in seeds:
        seeded = _with_seed(base, seed)
        cells.append(Cell(base.balancer.name, architecture, seed,
                          seeded.model_copy(update={"name": f"together-seed{seed}"}),
                          f"together/seed{seed}", title="all tasks together"))
        for group, folder in folders.items():
            config = seeded.model_copy(update={"only": list(group),
                                               "name": f"group-seed{seed}"})
            cells.append(Cell(base.balancer.name, architecture, seed, config,
                              f"{folder}/seed{seed}", title=f"group {{{', '.join(group)}}}"))
    return cells, folders


def _validation_value(results: Mapping[str, Any], task: str) -> float:
    """The task's primary validation metric at the run's best step, signed so higher is
    better (-inf when missing)."""
    info = results["tasks"][task]
    value = ((results.get("validation") or {}).get(task) or {}).get(info["metric"])
    if value is None:
        return -math.inf
    return float(value) if info["higher_is_better"] else -float(value)


def _grouped_run(strategy: Strategy, seed: int, tasks: Sequence[str],
                 results_of: Mapping[tuple[str, ...], Mapping[str, Any]], architecture: str,
                 ) -> tuple[dict[str, Any], dict[str, str]]:
    """A results document for one seed of a strategy: each task's test entry from its
    group's run (from the group with the best validation value when groups overlap), the
    wall time of all its groups, and the step time of one step of every group."""
    runs = {tuple(sorted(group)): results_of[tuple(sorted(group))] for group in strategy.groups}
    entries: dict[str, Any] = {}
    served: dict[str, str] = {}
    for task in tasks:
        holding = [key for key in runs if task in key]
        best = max(holding, key=lambda key: _validation_value(runs[key], task))
        entries[task] = runs[best]["tasks"][task]
        served[task] = "+".join(best)
    steps = [r.get("median_step_time_s") for r in runs.values()]
    return {
        "balancer": strategy.label, "architecture": architecture, "seed": seed,
        "tasks": entries, "wall_time_s": sum(r.get("wall_time_s") or 0 for r in runs.values()),
        "median_step_time_s": sum(steps) if all(s is not None for s in steps) else None,
    }, served


def _task_changes(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per task: the relative change against single-task (%, positive = better), mean ± std
    over the seeds, for one leaderboard row."""
    changes: dict[str, list[float | None]] = {}
    for run in runs:
        for task, entry in run["tasks"].items():
            baseline = entry.get("baseline")
            changes.setdefault(task, []).append(
                None if baseline in (None, 0) else
                relative_change(entry["value"], baseline, bool(entry["higher_is_better"])))
    return {task: stats(values) for task, values in changes.items()}


def _task_change_rows(board: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: each leaderboard row's mean relative change per task, and Δm%."""
    tasks = list(board["tasks"])
    rows = []
    for method in board["methods"]:
        change = method.get("task_change") or {}
        delta = method["delta_m"]["mean"]
        rows.append([method["balancer"],
                     *[f"{change[t]['mean']:+.2f}" if change.get(t, {}).get("mean") is not None
                       else "–" for t in tasks],
                     "–" if delta is None else f"{delta:+.2f}"])
    return [board.get("row_label", "balancer"), *tasks, "Δm%"], rows


def task_change_markdown(board: Mapping[str, Any]) -> str:
    """The per-task relative change of every row against single-task, as a Markdown table."""
    header, rows = _task_change_rows(board)
    return "\n".join(["Relative change per task against single-task (%, positive = better):",
                      "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(row) + " |" for row in rows)])


def grouping_change_table(board: Mapping[str, Any]) -> Table:
    """The per-task relative change of every strategy against single-task, for a terminal."""
    header, rows = _task_change_rows(board)
    table = Table(title="relative change per task vs single-task (%, positive = better)")
    for index, column in enumerate(header):
        table.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def run_grouping_bench(base: RunConfig, grouping: str | Path,
                       methods: str | Sequence[str] | None = None, groups: int | None = None,
                       seeds: int | Sequence[int] = DEFAULT_SEEDS,
                       out: str | Path = "runs/bench/grouping", console: Console | None = None,
                       source: str | None = None, command: str | None = None,
                       report: bool = True) -> BenchOutcome:
    """Validate task groups: train each group of each chosen partition (one run per group per
    seed), all tasks together and the single-task baselines, and write one leaderboard whose
    rows are the strategies (grouped, together; single-task is the reference row), with Δm%
    and the per-task relative change against single-task. Resumable like `run_bench`.

    Raises:
        ConfigError: see `read_grouping`; `baselines: none` (there would be no Δm%); a stale
            run folder; all before any training.
    """
    console = console or Console(stderr=True)
    started = time.perf_counter()
    out = Path(out)
    if base.baselines == "none":
        raise ConfigError("--grouping compares each strategy with single-task training, but "
                          "the config says baselines: none; use --set baselines=auto")
    tasks = [task.name for task in resolve(base).tasks]
    strategies = read_grouping(grouping, tasks, methods, groups)
    seed_list = ([base.train.seed + i for i in range(seeds)] if isinstance(seeds, int)
                 else list(dict.fromkeys(int(s) for s in seeds)))
    if not seed_list or min(seed_list) < 0:
        raise ConfigError(f"--seeds: must be at least 1 (got {seeds})")
    cells, folders = _grouping_cells(base, strategies, seed_list)
    for cell in cells:
        _check_same_settings(cell, out / cell.path)
    outcome = _train_cells(base, cells, out, console)
    architecture = base.model.architecture.name
    results_of: dict[tuple[tuple[str, ...], int], dict[str, Any]] = {}
    runs: list[dict[str, Any]] = []
    for cell in cells:
        document = json.loads((out / cell.path / "results.json").read_text())
        if cell.path.startswith("together/"):
            runs.append({**document, "balancer": "together", "architecture": architecture,
                         "run_dir": cell.path})
        else:
            results_of[(tuple(sorted(cell.config.only or [])), cell.seed)] = document
    served: dict[str, dict[int, dict[str, str]]] = {}
    for strategy in strategies:
        for seed in seed_list:
            of_seed = {key: value for (key, s), value in results_of.items() if s == seed}
            run, served.setdefault(strategy.label, {})[seed] = _grouped_run(
                strategy, seed, tasks, of_seed, architecture)
            runs.append(run)
    board = build_leaderboard(runs, reference="together")
    board["row_label"] = "strategy"
    for method in board["methods"]:
        members = [r for r in runs if r["balancer"] == method["balancer"]]
        method["task_change"] = _task_changes(members)
        strategy = next((s for s in strategies if s.label == method["balancer"]), None)
        if strategy is not None:
            method["groups"] = strategy.groups
            method["runs"] = [f"{folders[tuple(sorted(g))]}/seed{seed}"
                              for g in strategy.groups for seed in method["seeds"]]
    overlapping = any(sum(map(len, s.groups)) > len(tasks) for s in strategies)
    board["grouping"] = {"file": str(grouping), "served_by": served if overlapping else None}
    board["bench"] = {**_bench_facts(base, source, command, runs, board["seeds"], started,
                                     outcome), "grouping": str(grouping)}
    _write_board(out, board, base, runs, command, report, outcome,
                 notes=[task_change_markdown(board),
                        "Grouped: each task's test value comes from its group's run; its wall "
                        "time is the sum over the groups, its step time one step of every "
                        "group; step ÷ together compares that with training all tasks "
                        "together."])
    outcome.leaderboard = board
    return outcome
