"""The end-of-run table: each task's single-task and multi-task value, and Δm%."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def results_table(results: Mapping[str, Any]) -> Table:
    table = Table(title=f"test results · balancer {results['balancer']} · sampler "
                        f"{results['sampler']} · architecture {results['architecture']} · "
                        f"seed {results['seed']} · {results['steps']} steps")
    for column in ("task", "metric", "single-task", "multi-task", "change"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for name, task in results["tasks"].items():
        arrow = "↑" if task["higher_is_better"] else "↓"
        change = task.get("change_pct")
        table.add_row(name, f"{task['metric']} {arrow}", _fmt(task["baseline"]),
                      _fmt(task["value"]), "–" if change is None else f"{change:+.2f}%")
    return table


def print_results(results: Mapping[str, Any], console: Console) -> None:
    console.print(results_table(results))
    if results["delta_m"] is None:
        console.print("Δm%: – (no single-task baselines; run `polytask baseline CONFIG` or set "
                      "`baselines: auto`)")
    else:
        console.print(f"Δm% = {results['delta_m']:+.2f}%  (mean relative change vs single-task; "
                      "positive = multi-task is better; papers such as Nash-MTL print the "
                      "negation)")
