"""`polytask merge`: fine-tune one expert per task, merge their backbones, compare with
joint training.

    >>> from polytask.merge.regime import run_merge
    >>> outcome = run_merge(load_config("examples/merge.yaml"), ["task_arithmetic", "ties"],
    ...                     out="runs/merge")

What one call does:
1. the experts: every task's single-task baseline (trained when missing, reused from the
   cache otherwise), each checked to have started from the same base backbone
   (`polytask.merge.experts`);
2. per method, every point of the method's `grid` is merged and evaluated on the
   **validation** split; the point with the best mean relative change against the experts
   (on validation) is kept, and only that one is evaluated on **test** and written as a run
   directory (`OUT/merged/<method>`, or one per task, `OUT/merged/<method>/<task>`, for a
   merge that keeps backbone layers per task; see `polytask.merge.merged_run`);
3. the references: `experts` (each task by its own expert, the upper reference), `mix` (joint
   multi-task training of the same config, `OUT/mix`, reused when present), `frozen` (the
   base backbone frozen, each task's head trained on its features, `OUT/frozen`);
4. `OUT/results.json` (every row, the validation sweeps, the pairwise cosine of the task
   vectors), `OUT/leaderboard.md`/`.json` and `OUT/report.html`.

Δm% of every row is against the experts (the single-task baselines): the mean over tasks of
the relative change of the primary test metric, positive = better.
"""

from __future__ import annotations

import copy
import itertools
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from polytask.config import RunConfig
from polytask.errors import ConfigError
from polytask.evaluate.delta import delta_m
from polytask.evaluate.evaluation import primary, selection_score
from polytask.evaluate.leaderboard import DELTA_M_CONVENTION
from polytask.evaluate.report import write_report
from polytask.files import atomic_write_text, load_yaml
from polytask.merge.base import MERGERS, Merger, StateDict
from polytask.merge.experts import (
    Experts,
    check_trainable,
    evaluate_experts,
    load_backbone,
    load_experts,
    merge_data,
    record_base,
    task_vector_cosines,
)
from polytask.merge.merged_run import (
    evaluate_merged,
    is_single_model,
    merged_model,
    surgery_heads,
    write_merged_run,
    write_task_runs,
)
from polytask.registry import UnknownMethodError
from polytask.tasks.data import PreparedData
from polytask.train import run_dir as run_dir_guard
from polytask.train.results import build_results, write_json
from polytask.train.trainer import Trainer

#: Marks a folder written by `polytask merge` (a rerun into it reuses what it holds).
MARKER = ".polytask-merge"
#: Splits whose inputs adamerging/surgery may learn from (`--inputs`).
INPUT_SPLITS = ("validation", "test")
BASELINE_NOTE = ("Δm% is against the experts: each task's single-task baseline, fine-tuned "
                 "alone from the same base backbone (" + DELTA_M_CONVENTION + ").")


@dataclass
class Candidate:
    """One grid point of a method, merged and scored on validation."""

    hyperparameters: dict[str, Any]
    validation: dict[str, dict[str, float]]
    score: float
    seconds: float
    notes: list[str]
    state: StateDict = field(repr=False)


@dataclass
class MergeOutcome:
    """What `run_merge` returns: the results document and the files written."""

    results: dict[str, Any]
    files: dict[str, Path]


def method_names(methods: str | Sequence[str] | None) -> list[str]:
    """The methods to run (all registered ones when None), each checked by name."""
    if methods is None:
        return MERGERS.names()
    items = methods.split(",") if isinstance(methods, str) else list(methods)
    names = list(dict.fromkeys(i.strip() for i in items if i.strip()))
    if not names:
        raise ConfigError(f"--methods: name at least one method: {', '.join(MERGERS.names())}")
    for name in names:
        try:
            MERGERS.get(name)
        except UnknownMethodError as error:
            raise ConfigError(f"--methods: {error}") from None
    return names


def check_out(out: Path) -> None:
    """Refuse a file, or a non-empty folder that an earlier `polytask merge` did not write."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; choose a folder (nothing was written)")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ConfigError(f"--out {out} is not empty and was not written by polytask merge; "
                          "choose a new or empty folder (nothing was written)")


def grid_points(cls: type[Merger], fixed: Mapping[str, Any] | None = None,
                ) -> list[dict[str, Any]]:
    """Every combination of the method's grid values (one empty point for no grid); a
    hyperparameter in `fixed` is not searched."""
    keys = [k for k in cls.grid if k not in (fixed or {})]
    return [dict(zip(keys, values, strict=True))
            for values in itertools.product(*(cls.grid[k] for k in keys))]


def check_options(options: Mapping[str, Mapping[str, Any]], names: Sequence[str],
                  ) -> dict[str, dict[str, Any]]:
    """The fixed hyperparameters, checked: each names a method being run and hyperparameters
    its constructor takes (tried on a default instance, so a bad value fails before any
    training)."""
    for name, values in options.items():
        if name not in names:
            raise ConfigError(f"--option {name}.*: {name!r} is not among the methods being run "
                              f"({', '.join(names)})")
        _build(name, values)
    return {name: dict(values) for name, values in options.items()}


def parse_options(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`--option METHOD.KEY=VALUE` items (values are YAML) as method -> {key: value}."""
    options: dict[str, dict[str, Any]] = {}
    for item in items:
        key, equals, raw = item.partition("=")
        method, dot, name = key.partition(".")
        if not equals or not dot or not method or not name:
            raise ConfigError(f"--option {item!r}: expected METHOD.KEY=VALUE, e.g. "
                              "adamerging.steps=50")
        options.setdefault(method.strip(), {})[name.strip()] = load_yaml(raw)
    return options


def _build(name: str, hyperparameters: Mapping[str, Any]) -> Merger:
    try:
        return MERGERS.get(name)(**hyperparameters)
    except TypeError as error:
        raise ConfigError(f"merge method {name!r}: bad hyperparameters "
                          f"{dict(hyperparameters)}: {error}") from None


def search(experts: Experts, name: str, expert_validation: Mapping[str, float],
           inputs: str, rows: int, console: Console, fixed: Mapping[str, Any] | None = None,
           ) -> tuple[Candidate, list[dict[str, Any]]]:
    """Merge every grid point of `name` (with the `fixed` hyperparameters), score it on
    validation against the experts, and return the best one (the first on ties) with the
    sweep of every point."""
    cls = MERGERS.get(name)
    data = merge_data(experts, name, inputs, rows) if cls.needs_data else None
    best: Candidate | None = None
    sweep: list[dict[str, Any]] = []
    for point in grid_points(cls, fixed):
        merger = _build(name, {**(fixed or {}), **point})
        tick = time.perf_counter()
        merged = merger.merge(experts.base, experts.backbones, data)
        seconds = time.perf_counter() - tick
        validation = evaluate_merged(experts, merged, "validation")
        score = selection_score(primary(validation, experts.data), dict(expert_validation),
                                experts.data)
        sweep.append({"hyperparameters": point, "score": score, "seconds": round(seconds, 3),
                      "validation": primary(validation, experts.data)})
        console.print(f"  {name} {_shown(point)}: validation Δ {score:+.2f}% "
                      f"({seconds:.1f}s)", highlight=False)
        if best is None or score > best.score:
            best = Candidate({**(fixed or {}), **point}, validation, score, seconds,
                             merger.report(), merged)
    assert best is not None
    return best, sweep


def _shown(hyperparameters: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in hyperparameters.items()) or "(no hyperparameters)"


def _row(name: str, kind: str, values: Mapping[str, float], experts_test: Mapping[str, float],
         experts: Experts, seconds: float | None, **extra: Any) -> dict[str, Any]:
    entries = {t: (values[t], experts_test[t], experts.data.kinds[t].higher_is_better)
               for t in experts.tasks}
    return {"name": name, "kind": kind, "tasks": dict(values), "delta_m": delta_m(entries),
            "seconds": None if seconds is None else round(seconds, 2), **extra}


def merge_method(experts: Experts, name: str, out: Path, expert_validation: Mapping[str, float],
                 experts_test: Mapping[str, float], inputs: str, rows: int,
                 console: Console, fixed: Mapping[str, Any] | None = None,
                 ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Search `name`'s grid on validation, evaluate the chosen merge on test and write it as
    a run directory; returns its leaderboard row and its sweep."""
    points = len(grid_points(MERGERS.get(name), fixed))
    console.print(f"merge {name}: searching {points} grid point(s) on validation",
                  highlight=False)
    chosen, sweep = search(experts, name, expert_validation, inputs, rows, console, fixed)
    test = evaluate_merged(experts, chosen.state, "test")
    unlabelled = MERGERS.get(name).unlabelled_inputs
    record = {"method": name, "hyperparameters": chosen.hyperparameters,
              "chosen_on": "validation", "merge_seconds": round(chosen.seconds, 3),
              "inputs": inputs if unlabelled else None, "notes": chosen.notes,
              "experts": {t: str(d) for t, d in experts.dirs.items()},
              "surgery_heads": surgery_heads(chosen.state)}

    def results_of(config: RunConfig, data: PreparedData) -> dict[str, Any]:
        tasks = [t.name for t in data.tasks]
        results = build_results(config, data, test,
                                {"validation": {t: chosen.validation[t] for t in tasks}}, 0,
                                experts_test, False, wall_time=chosen.seconds, step_time=None)
        return {**results, "balancer": f"merge:{name}"}

    directory = out / "merged" / name
    if is_single_model(chosen.state):
        write_merged_run(directory, experts, merged_model(experts, chosen.state), record,
                         results_of(experts.config, experts.data))
    else:
        write_task_runs(directory, experts, chosen.state, record, results_of)
        chosen.notes.append("one run directory per task (backbone layers kept per task)")
    row = _row(name, "merge", primary(test, experts.data), experts_test, experts,
               chosen.seconds, hyperparameters=chosen.hyperparameters,
               inputs=record["inputs"], notes=chosen.notes,
               run_dir=str(directory.relative_to(out)))
    return row, sweep


def _trained_row(name: str, config: RunConfig, directory: Path, out: Path, experts: Experts,
                 experts_test: Mapping[str, float], console: Console,
                 backbone: torch.nn.Module | None = None) -> dict[str, Any]:
    """Train (or reuse) the run `config` in `directory`; its leaderboard row."""
    path = directory / "results.json"
    if path.exists():
        changes = run_dir_guard.config_differences(directory, config.dump())
        if changes:
            raise ConfigError(f"merge: {directory} holds a run with other settings "
                              f"({', '.join(list(changes)[:4])}); delete it to retrain it")
        console.print(f"{name}: reusing {directory}", highlight=False)
        results = json.loads(path.read_text())
    else:
        console.print(f"{name}: training -> {directory}", highlight=False)
        results = Trainer(config, directory, resume=directory.exists(), console=console,
                          baselines=dict(experts_test), model=backbone).fit()
    values = {t: results["tasks"][t]["value"] for t in experts.tasks}
    return _row(name, "joint" if name == "mix" else "reference", values, experts_test, experts,
                results.get("wall_time_s"), run_dir=str(directory.relative_to(out)))


#: Learning rate of the `frozen` reference's heads: a head on frozen features (a linear probe)
#: learns at a far higher rate than fine-tuning uses; at a fine-tuning rate such as 5e-5 its
#: heads barely leave their initialisation and the reference says nothing.
FROZEN_LR = 1e-3


def frozen_run(config: RunConfig, experts: Experts, lr: float = FROZEN_LR
               ) -> tuple[RunConfig, torch.nn.Module | None]:
    """The config (and, for the MLP, the frozen base module) of the `frozen` reference: the
    base backbone frozen, each task's head trained on its features with learning rate `lr`
    (the run's other training settings unchanged)."""
    train = config.train.model_copy(update={"lr": lr})
    frozen = config.model_copy(update={"model": experts.config.model, "baselines": "none",
                                       "name": "frozen", "train": train})
    if experts.spec.type == "hf":
        spec = experts.spec.model_copy(update={"trainable_layers": 0})
        model = frozen.model.model_copy(update={"backbone": spec})
        return frozen.model_copy(update={"model": model}), None
    load_backbone(experts, experts.base)
    module = copy.deepcopy(experts.model.backbone)
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return frozen, module


def run_merge(config: RunConfig, methods: str | Sequence[str] | None = None,
              out: str | Path = "runs/merge", inputs: str = "validation", rows: int = 512,
              console: Console | None = None, references: bool = True,
              options: Mapping[str, Mapping[str, Any]] | None = None,
              frozen_lr: float = FROZEN_LR) -> MergeOutcome:
    """Run the merge regime (see the module docstring); `references=False` skips the `mix`
    and `frozen` rows (their training). `rows`: at most this many rows per task feed the
    data-driven methods. `options`: method -> hyperparameters fixed for it (not searched),
    e.g. `{"adamerging": {"steps": 50}}`. `frozen_lr`: the learning rate of the `frozen`
    reference's heads."""
    console = console or Console(stderr=True)
    out = Path(out)
    names = method_names(methods)
    options = check_options(options or {}, names)
    if inputs not in INPUT_SPLITS:
        raise ConfigError(f"--inputs: {inputs!r} is not a split adamerging/surgery may learn "
                          f"from; use {' or '.join(INPUT_SPLITS)}")
    if rows <= 0:
        raise ConfigError(f"--rows: must be a positive number of rows per task (got {rows})")
    if not frozen_lr > 0:
        raise ConfigError(f"--frozen-lr: must be a positive learning rate (got {frozen_lr})")
    check_out(out)
    check_trainable(config)
    experts = load_experts(config, console)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()
    record_base(experts.base, out)
    expert_validation = primary(evaluate_experts(experts, "validation"), experts.data)
    experts_test = primary(evaluate_experts(experts, "test"), experts.data)
    training = sum(json.loads((d / "results.json").read_text()).get("wall_time_s") or 0.0
                   for d in experts.dirs.values())
    rows_out = [_row("experts", "reference", experts_test, experts_test, experts, training,
                     run_dir={t: str(d) for t, d in experts.dirs.items()})]
    sweeps: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        row, sweeps[name] = merge_method(experts, name, out, expert_validation, experts_test,
                                         inputs, rows, console, options.get(name))
        rows_out.append(row)
    if references:
        mix = config.model_copy(update={"baselines": "none"})
        rows_out.append(_trained_row("mix", mix, out / "mix", out, experts, experts_test,
                                     console))
        frozen, module = frozen_run(config, experts, frozen_lr)
        rows_out.append(_trained_row("frozen", frozen, out / "frozen", out, experts,
                                     experts_test, console, module))
    results = {
        "regime": "merge", "name": config.name,
        "tasks": {t: {"metric": experts.data.kinds[t].metric,
                      "higher_is_better": experts.data.kinds[t].higher_is_better}
                  for t in experts.tasks},
        "baseline": "experts", "baseline_note": BASELINE_NOTE,
        "delta_m_convention": DELTA_M_CONVENTION, "inputs": inputs,
        "rows": rows_out, "sweeps": sweeps, "experts_validation": dict(expert_validation),
        "task_vector_cosine": task_vector_cosines(experts), "seed": config.train.seed,
    }
    header, table = leaderboard_rows(results)
    results["leaderboard"] = {"header": header, "rows": table, "note": leaderboard_notes()}
    return MergeOutcome(results, write_outputs(results, out))


# -- the leaderboard ----------------------------------------------------------------------
def leaderboard_rows(results: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the merge leaderboard (Markdown, HTML and the terminal)."""
    tasks = results["tasks"]
    header = ["row", "hyperparameters",
              *[f"{t} {i['metric']} {'↑' if i['higher_is_better'] else '↓'}"
                for t, i in tasks.items()], "Δm% ↑", "seconds"]
    table = []
    for row in results["rows"]:
        delta = row.get("delta_m")
        label = row["name"] + (f" ({row['inputs']} inputs)" if row.get("inputs") else "")
        seconds = row.get("seconds")
        table.append([label, _shown(row.get("hyperparameters") or {}) if row["kind"] == "merge"
                      else "–", *[f"{row['tasks'][t]:.4f}" for t in tasks],
                      "–" if delta is None else f"{delta:+.2f}",
                      "–" if seconds is None else f"{seconds:.1f}"])
    return header, table


def leaderboard_notes() -> str:
    return (BASELINE_NOTE + " Hyperparameters: chosen on the validation split from each "
            "method's grid (never on test). seconds: the merge's wall time for a merging "
            "method; the training time for experts (all of them), mix and frozen.")


def leaderboard_markdown(results: Mapping[str, Any]) -> str:
    header, rows = leaderboard_rows(results)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    title = f"# Merge leaderboard · {results.get('name') or 'run'}"
    return "\n".join([title, "", line(header),
                      line([":---", ":---", *["---:"] * (len(header) - 2)]),
                      *(line(r) for r in rows), "", leaderboard_notes(), ""])


def leaderboard_table(results: Mapping[str, Any]) -> Table:
    header, rows = leaderboard_rows(results)
    table = Table(title=f"merge · {results.get('name') or 'run'}")
    for index, column in enumerate(header):
        table.add_column(column, justify="left" if index < 2 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def write_outputs(results: Mapping[str, Any], out: Path) -> dict[str, Path]:
    """results.json, leaderboard.json/.md and report.html in `out`."""
    write_json(out / "results.json", results)
    write_json(out / "leaderboard.json", {k: results[k] for k in ("tasks", "rows", "baseline",
                                                                  "delta_m_convention")})
    atomic_write_text(out / "leaderboard.md", leaderboard_markdown(results))
    return {"results.json": out / "results.json", "leaderboard.json": out / "leaderboard.json",
            "leaderboard.md": out / "leaderboard.md", "report.html": write_report(out)}
