"""`report.html`: a self-contained page (figures embedded as base64 PNG) for a run or a bench.

    >>> from polytask.evaluate.report import write_report
    >>> write_report("runs/census")          # a run dir: metrics.jsonl (+ results.json)
    >>> write_report("runs/bench/census")    # a bench dir: leaderboard.json + cells/

A **run** report shows the test results table, the training loss and validation metric of
every task over training, the task weights over training (loss weightings whose weights
move), the pairwise gradient cosine heatmap (balancers that saw per-task gradients logged
`cosine/<a>/<b>`), each task's multi-task vs single-task test value, and for a palora run
traced with `polytask eval --pareto K` its Pareto front (pareto.json). A **bench** report
shows the leaderboard table, Δm% per method with error bars over seeds, every task's metric
per method against single-task, and Δm% against step-time cost, with links to each cell's
own report. Every figure is also written as a PNG beside report.html. matplotlib (Agg) only;
nothing is fetched from the network.
"""

from __future__ import annotations

import base64
import html
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from polytask.errors import PolytaskError
from polytask.evaluate.leaderboard import leaderboard_rows
from polytask.files import atomic_write_bytes, atomic_write_text, read_yaml

__all__ = ["FIGURE_TITLES", "read_records", "write_bench_report", "write_merge_report",
           "write_report", "write_run_report"]

#: Figure key (also the PNG file stem) -> the title shown in the report.
FIGURE_TITLES = {
    "train_loss": "Training loss per task",
    "validation": "Validation metric per task",
    "task_weights": "Task weights over training",
    "gradient_cosine": "Pairwise gradient cosine over training",
    "single_vs_multi": "Multi-task vs single-task (test)",
    "pareto_front": "Pareto front over preferences (palora)",
    "delta_m": "Δm% by method",
    "per_task": "Per-task test metric by method",
    "cost": "Δm% vs step time",
    "merge_sweep": "Validation metric over each merging method's grid (λ-sweep)",
    "task_vector_cosine": "Pairwise cosine of the task vectors",
}

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1200px;padding:0 1rem;color:#222;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;
border-bottom:1px solid #ddd;padding-bottom:.2rem}.meta{color:#555;font-size:.92rem}
table{border-collapse:collapse;font-size:.9rem;margin:.6rem 0}th,td{border:1px solid #ddd;
padding:.3rem .55rem;text-align:right}th{background:#f4f4f4}td.l,th.l{text-align:left}
tr.ref td{background:#fafafa;font-style:italic}img{max-width:100%;height:auto}
.note{color:#666;font-size:.88rem}code{background:#f4f4f4;padding:0 .25rem;border-radius:3px}
.good{color:#1a7f37}.bad{color:#b42318}
"""


def _warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")


def read_records(path: Path, warn: Callable[[str], None] = _warn) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl. Lines that are not JSON records (a torn last line
    from a live or killed run, a damaged file) are skipped, and `warn` is told how many."""
    records = []
    if not path.exists():
        return records
    unreadable = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                unreadable.append(number)
    if unreadable:
        warn(f"{path}: skipped {len(unreadable)} unreadable line(s) (first: line "
             f"{unreadable[0]})")
    return records


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


class _Page:
    """Collects sections and figures; writes report.html and the PNGs beside it."""

    def __init__(self, directory: Path, title: str) -> None:
        self.directory = directory
        self.title = title
        self.parts: list[str] = []
        self.figures: list[str] = []

    def add(self, markup: str) -> None:
        self.parts.append(markup)

    def figure(self, key: str, figure: Any, caption: str = "", missing: str = "") -> None:
        from polytask.evaluate.plots import png_bytes

        title = FIGURE_TITLES[key]
        if figure is None:
            if missing:
                self.add(f'<h2>{html.escape(title)}</h2><p class="note">{html.escape(missing)}'
                         "</p>")
            return
        data = png_bytes(figure)
        atomic_write_bytes(self.directory / f"{key}.png", data)
        encoded = base64.b64encode(data).decode("ascii")
        note = f'<p class="note">{caption}</p>' if caption else ""
        self.add(f'<section id="{key}"><h2>{html.escape(title)}</h2>{note}'
                 f'<img alt="{html.escape(title)}" title="{html.escape(title)}" '
                 f'src="data:image/png;base64,{encoded}"></section>')
        self.figures.append(key)

    def write(self) -> Path:
        path = self.directory / "report.html"
        body = "\n".join(self.parts)
        text = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f"<title>{html.escape(self.title)}</title><style>{STYLE}</style></head>"
                f"<body>\n{body}\n<p class=\"note\">Generated by polytask "
                "(<code>polytask report</code>); figures are also saved as PNG files beside "
                "this page.</p></body></html>\n")
        atomic_write_text(path, text)
        return path


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1,
           reference_rows: Sequence[int] = ()) -> str:
    def cell(tag: str, index: int, value: str) -> str:
        cls = ' class="l"' if index < left else ""
        return f"<{tag}{cls}>{html.escape(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join(
        f'<tr{" class=ref" if r in reference_rows else ""}>'
        + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>"
        for r, row in enumerate(rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


# -- a run --------------------------------------------------------------------------------
def _run_tasks(records: Sequence[Mapping[str, Any]], results: Mapping[str, Any] | None,
               config: Mapping[str, Any] | None) -> tuple[list[str], dict[str, str],
                                                           dict[str, bool]]:
    """Task names, primary metric and direction per task (from results.json, else guessed
    from the records: the first metric logged for each task on validation)."""
    if results and results.get("tasks"):
        tasks = results["tasks"]
        return (list(tasks), {t: v["metric"] for t, v in tasks.items()},
                {t: bool(v["higher_is_better"]) for t, v in tasks.items()})
    names: dict[str, None] = {}
    metrics: dict[str, str] = {}
    for record in records:
        for key in record:
            if record.get("split") == "train" and key.startswith("loss/"):
                names[key.removeprefix("loss/")] = None
            elif record.get("split") == "validation" and "/" in key:
                task, metric = key.rsplit("/", 1)
                names[task] = None
                metrics.setdefault(task, metric)
    lower = {"mae", "mse", "rmse", "loss"}
    return list(names), metrics, {t: m not in lower for t, m in metrics.items()}


def write_run_report(run_dir: str | Path) -> Path:
    """Write `run_dir/report.html` (and its PNGs) from metrics.jsonl and results.json."""
    from polytask.evaluate import plots

    run_dir = Path(run_dir)
    records = read_records(run_dir / "metrics.jsonl")
    results = _read_json(run_dir / "results.json")
    if not records and results is None:
        raise PolytaskError(f"{run_dir}: no metrics.jsonl or results.json; is it a run "
                            "directory (polytask train) or a bench directory (polytask bench)?")
    config_path = run_dir / "config.yaml"
    config = read_yaml(config_path) if config_path.exists() else None
    tasks, metrics, directions = _run_tasks(records, results, config)
    train = [r for r in records if r.get("split") == "train"]
    validation = [r for r in records if r.get("split") == "validation"]

    page = _Page(run_dir, f"polytask run · {run_dir.name}")
    page.add(f"<h1>Run <code>{html.escape(run_dir.name)}</code></h1>")
    source = results or {}
    if not source and config:
        source = {"balancer": (config.get("balancer") or {}).get("name"),
                  "architecture": ((config.get("model") or {}).get("architecture")
                                   or {}).get("name"),
                  "sampler": (config.get("sampler") or {}).get("name"),
                  "seed": (config.get("train") or {}).get("seed")}
    facts = [f"{k} <b>{html.escape(str(source[k]))}</b>"
             for k in ("balancer", "architecture", "sampler", "seed", "steps", "best_step",
                       "wall_time_s") if source.get(k) is not None]
    page.add(f'<p class="meta">{" · ".join(facts)}</p>')
    if results is None:
        page.add('<p class="note">No results.json yet (the run is unfinished): curves only.</p>')
    else:
        header = ["task", "metric", "single-task", "multi-task", "change"]
        rows = []
        for name, task in results["tasks"].items():
            arrow = "↑" if task["higher_is_better"] else "↓"
            change = task.get("change_pct")
            rows.append([name, f"{task['metric']} {arrow}", _fmt(task.get("baseline")),
                         _fmt(task["value"]), "–" if change is None else f"{change:+.2f}%"])
        page.add("<h2>Test results</h2>" + _table(header, rows, left=2))
        delta = results.get("delta_m")
        if delta is None:
            page.add('<p class="note">Δm%: – (no single-task baselines; run <code>polytask '
                     "baseline CONFIG</code> or set <code>baselines: auto</code>)</p>")
        else:
            cls = "good" if delta >= 0 else "bad"
            page.add(f'<p>Δm% = <b class="{cls}">{delta:+.2f}%</b> '
                     '<span class="note">(mean relative change of the primary metric vs '
                     "single-task; positive = multi-task is better)</span></p>")

    page.figure("train_loss", plots.train_loss_figure(train, tasks),
                "Raw logged batch losses (faint) and their exponential moving average.",
                "No training losses logged yet.")
    test_values = ({t: v["value"] for t, v in results["tasks"].items()} if results else None)
    page.figure("validation", plots.validation_figure(validation, metrics, directions,
                                                      test_values),
                "Primary metric on the validation split at each evaluation; the star marks "
                "the evaluation whose weights were kept, the dashed line the test value.",
                "No validation evaluations logged yet.")
    has_weights = any(k.startswith("weight/") for r in train for k in r)
    page.figure("task_weights", plots.weights_figure(train, tasks),
                "The weight each task's loss received at the logged steps.",
                "The task weights stayed constant (e.g. equal weighting)." if has_weights
                else "No task weights logged (a gradient aggregator combines gradients, not "
                "weighted losses).")
    page.figure("gradient_cosine", plots.cosine_figure(train, tasks),
                "Cosine similarity of each pair of task gradients on the shared parameters, "
                "at every logged step (left) and averaged (right): red = conflicting "
                "(negative), blue = aligned.",
                "No gradient cosines logged: this balancer does not compute per-task "
                "gradients (gradient aggregators such as pcgrad or mgda do).")
    if results is not None:
        page.figure("single_vs_multi", plots.single_vs_multi_figure(results),
                    "Test value of each task's primary metric; the change is relative to the "
                    "single-task baseline (positive = better).")
    front = _read_json(run_dir / "pareto.json")
    if front is not None:
        page.figure("pareto_front", plots.pareto_front_figure(front),
                    "A palora run evaluated at preference vectors spread over the simplex "
                    "(<code>polytask eval --pareto K</code>): each point is one preference, "
                    "coloured by the weight of the task on the horizontal axis.")
    return page.write()


# -- a bench ------------------------------------------------------------------------------
def write_bench_report(bench_dir: str | Path) -> Path:
    """Write `bench_dir/report.html` (and its PNGs) from leaderboard.json (+ bench.json)."""
    from polytask.evaluate import plots

    bench_dir = Path(bench_dir)
    board = _read_json(bench_dir / "leaderboard.json")
    if board is None:
        raise PolytaskError(f"{bench_dir}: no leaderboard.json; run `polytask bench` first")
    meta = board.get("bench") or {}
    page = _Page(bench_dir, f"polytask bench · {meta.get('source', bench_dir.name)}")
    page.add(f"<h1>Leaderboard · <code>{html.escape(str(meta.get('source', bench_dir.name)))}"
             "</code></h1>")
    labels = {"steps": "steps", "seeds": "seeds", "train_size": "train rows",
              "batch_size": "batch per task", "lr": "lr",
              "cells_wall_time_s": "training time of the grid (s)",
              "baselines_wall_time_s": "of the single-task baselines (s)"}
    facts = [f"{label} <b>{html.escape(str(meta[k]))}</b>"
             for k, label in labels.items() if meta.get(k) is not None]
    page.add(f'<p class="meta">{" · ".join(facts)}</p>')
    if meta.get("command"):
        page.add(f'<p class="meta">command: <code>{html.escape(meta["command"])}</code></p>')
    header, rows = leaderboard_rows(board)
    single = [i for i, r in enumerate(rows) if r[1] == "single-task"]
    page.add("<h2>Leaderboard</h2>" + _table(header, rows, left=3, reference_rows=single))
    page.add('<p class="note">Mean ± std over seeds of the primary test metric. Δm% = '
             + html.escape(board.get("delta_m_convention", "")) + "; each run is compared "
             "with single-task baselines trained with the same settings and seed. MR = mean "
             "rank over tasks (1 = best, ties share the average rank). step ÷ "
             f"{html.escape(board.get('reference', 'ew'))} = median step time relative to "
             f"{html.escape(board.get('reference', 'ew'))} on the same architecture.</p>")
    page.figure("delta_m", plots.delta_m_figure(board),
                "Bars: mean Δm% over seeds; whiskers: ± one standard deviation. Above zero, "
                "the multi-task model beats training each task alone.",
                "No Δm%: the runs have no single-task baselines.")
    page.figure("per_task", plots.per_task_figure(board),
                "Each method's test value (mean ± std over seeds); the dashed line and grey "
                "band are the single-task baseline (mean ± std).")
    page.figure("cost", plots.cost_figure(board),
                "Δm% against the median time of one training step relative to the reference "
                "balancer on the same architecture.")
    links = []
    for method in board["methods"]:
        for run in method.get("runs", []):
            if (bench_dir / run / "report.html").exists():
                links.append(f'<a href="{html.escape(run)}/report.html">'
                             f"{html.escape(run)}</a>")
    if links:
        page.add("<h2>Per-run reports</h2><p class=\"note\">Curves, task weights and gradient "
                 "cosines of every cell (links relative to this page):</p><p>"
                 + " · ".join(links) + "</p>")
    return page.write()


# -- a merge ------------------------------------------------------------------------------
def write_merge_report(merge_dir: str | Path) -> Path:
    """Write `merge_dir/report.html` (and its PNGs) from the results.json of `polytask merge`:
    the leaderboard (rows and header as the merge wrote them), the validation sweep of every
    method's grid and the pairwise cosine of the task vectors."""
    from polytask.evaluate import plots

    merge_dir = Path(merge_dir)
    results = _read_json(merge_dir / "results.json")
    page = _Page(merge_dir, f"polytask merge · {results.get('name') or merge_dir.name}")
    page.add(f"<h1>Merge · <code>{html.escape(str(results.get('name') or merge_dir.name))}"
             "</code></h1>")
    header, rows = results["leaderboard"]["header"], results["leaderboard"]["rows"]
    references = [i for i, r in enumerate(results["rows"]) if r["kind"] != "merge"]
    page.add("<h2>Leaderboard</h2>" + _table(header, rows, left=2, reference_rows=references))
    page.add(f'<p class="note">{html.escape(results["leaderboard"]["note"])}</p>')
    page.figure("merge_sweep", plots.merge_sweep_figure(results),
                "Each method's validation Δ% against the experts at every point of its grid "
                "(the chosen point is starred); a method with one hyperparameter, such as "
                "task_arithmetic's λ (scale), is a line over it.",
                "No method searched a grid.")
    page.figure("task_vector_cosine", plots.task_vector_cosine_figure(results),
                "Cosine similarity of the task vectors (expert minus base backbone, all "
                "parameters flattened): near 0 = the experts moved in unrelated directions.")
    return page.write()


def write_report(directory: str | Path) -> Path:
    """A merge report when `directory` holds the results.json of `polytask merge`, a bench
    report when it holds leaderboard.json, else a run report."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PolytaskError(f"{directory}: not a directory; pass a run or bench directory")
    if (_read_json(directory / "results.json") or {}).get("regime") == "merge":
        return write_merge_report(directory)
    if (directory / "leaderboard.json").exists():
        return write_bench_report(directory)
    return write_run_report(directory)
