"""A method leaderboard from finished runs: per task mean ± std over seeds, Δm%, mean rank, cost.

`build_leaderboard(runs)` takes results.json documents (one per balancer × architecture ×
seed) and returns a JSON-ready dict; `leaderboard_markdown` renders it as a table.

- **Per task**: mean ± sample std (ddof 1; none for a single seed) of the primary test metric.
- **Δm%** (positive = better than single-task, see `polytask.evaluate.delta`): computed per
  run against that run's own (same-seed) single-task baselines, then mean ± std over seeds.
- **MR** (mean rank): each method's mean metric is ranked among the methods on every task
  (1 = best, direction-aware, ties share the average rank), then averaged over tasks. The
  single-task reference row is shown but not ranked.
- **Cost**: mean wall time of a run, mean median step time, and that step time divided by
  the step time of the reference balancer (`ew`) on the same architecture.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from polytask.evaluate.delta import delta_m, mean_rank

__all__ = ["build_leaderboard", "leaderboard_markdown", "stats"]

DELTA_M_CONVENTION = ("mean relative change of the primary test metric vs single-task, %, "
                      "positive = better (papers such as Nash-MTL print the negation)")


def stats(values: Sequence[float | None]) -> dict[str, Any]:
    """`{"mean", "std", "n", "values"}` of the non-missing values (std: ddof 1, None if n < 2)."""
    kept = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(kept)
    return {"mean": float(np.mean(kept)) if n else None,
            "std": float(np.std(kept, ddof=1)) if n > 1 else None,
            "n": n, "values": kept}


def _method_name(balancer: str, architecture: str) -> str:
    return f"{balancer} · {architecture}"


def build_leaderboard(runs: Sequence[Mapping[str, Any]], reference: str = "ew",
                      ) -> dict[str, Any]:
    """Aggregate results.json documents into a leaderboard (see the module docstring).

    Each run needs `balancer`, `architecture`, `seed`, `tasks` (task -> `metric`,
    `higher_is_better`, `value`, `baseline`) and optionally `wall_time_s`,
    `median_step_time_s` and `run_dir` (kept as a link). Methods keep the order in which
    they first appear; `methods` is sorted by Δm% (best first; missing last), then MR.

    Raises:
        ValueError: if `runs` is empty or the runs do not share the same tasks.
    """
    if not runs:
        raise ValueError("build_leaderboard: no finished runs given")
    first = runs[0]["tasks"]
    tasks = {name: {"metric": t["metric"], "higher_is_better": bool(t["higher_is_better"])}
             for name, t in first.items()}
    for run in runs:
        if list(run["tasks"]) != list(tasks):
            raise ValueError(
                f"build_leaderboard: runs have different tasks ({list(run['tasks'])} vs "
                f"{list(tasks)}); a leaderboard compares methods on the same tasks")

    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["balancer"], run["architecture"]), []).append(run)

    baselines: dict[str, dict[int, float]] = {t: {} for t in tasks}
    for run in runs:
        for name, entry in run["tasks"].items():
            if entry.get("baseline") is not None:
                baselines[name].setdefault(int(run["seed"]), float(entry["baseline"]))

    methods: list[dict[str, Any]] = []
    for (balancer, architecture), members in groups.items():
        members = sorted(members, key=lambda r: int(r["seed"]))
        deltas = []
        for run in members:
            entries = {n: (float(t["value"]), t.get("baseline"), bool(t["higher_is_better"]))
                       for n, t in run["tasks"].items()}
            deltas.append(delta_m(entries))
        methods.append({
            "name": _method_name(balancer, architecture),
            "balancer": balancer, "architecture": architecture,
            "seeds": [int(r["seed"]) for r in members],
            "tasks": {n: stats([float(r["tasks"][n]["value"]) for r in members])
                      for n in tasks},
            "delta_m": stats(deltas),
            "wall_time_s": stats([r.get("wall_time_s") for r in members]),
            "median_step_time_s": stats([r.get("median_step_time_s") for r in members]),
            "runs": [str(r["run_dir"]) for r in members if r.get("run_dir") is not None],
        })

    ranks = mean_rank({m["name"]: {t: m["tasks"][t]["mean"] for t in tasks} for m in methods},
                      {t: info["higher_is_better"] for t, info in tasks.items()})
    step_of = {(m["balancer"], m["architecture"]): m["median_step_time_s"]["mean"]
               for m in methods}
    for method in methods:
        method["mean_rank"] = ranks[method["name"]]
        ref = step_of.get((reference, method["architecture"]))
        own = method["median_step_time_s"]["mean"]
        method["step_time_ratio"] = (own / ref if ref and own is not None else None)

    def order(method: Mapping[str, Any]) -> tuple[bool, float, float]:
        delta = method["delta_m"]["mean"]
        return (delta is None, -(delta or 0.0), method["mean_rank"])

    methods.sort(key=order)
    for position, method in enumerate(methods, 1):
        method["position"] = position
    return {
        "tasks": tasks,
        "single_task": {t: stats(list(values.values())) for t, values in baselines.items()},
        "methods": methods,
        "reference": reference,
        "seeds": sorted({int(r["seed"]) for r in runs}),
        "delta_m_convention": DELTA_M_CONVENTION,
    }


def _pm(entry: Mapping[str, Any], digits: int = 4, signed: bool = False) -> str:
    mean, std = entry.get("mean"), entry.get("std")
    if mean is None:
        return "–"
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return text if std is None else f"{text} ± {std:.{digits}f}"


def leaderboard_rows(board: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the leaderboard table (shared by the Markdown, HTML and CLI). The
    second column is headed `board["row_label"]` when set (e.g. "strategy"), else balancer."""
    tasks = board["tasks"]
    header = ["#", board.get("row_label", "balancer"), "architecture",
              *[f"{t} {i['metric']} {'↑' if i['higher_is_better'] else '↓'}"
                for t, i in tasks.items()],
              "Δm% ↑", "MR ↓", "wall s", f"step ÷ {board.get('reference', 'ew')}"]
    rows = []
    for m in board["methods"]:
        ratio = m.get("step_time_ratio")
        wall = m["wall_time_s"]["mean"]
        rows.append([str(m["position"]), m["balancer"], m["architecture"],
                     *[_pm(m["tasks"][t]) for t in tasks], _pm(m["delta_m"], 2, signed=True),
                     f"{m['mean_rank']:.2f}", "–" if wall is None else f"{wall:.1f}",
                     "–" if ratio is None else f"{ratio:.2f}×"])
    single = board.get("single_task") or {}
    if any(single.get(t, {}).get("mean") is not None for t in tasks):
        rows.append(["", "single-task", "(baseline)",
                     *[_pm(single.get(t, {})) for t in tasks], "+0.00", "–", "–", "–"])
    return header, rows


def leaderboard_markdown(board: Mapping[str, Any], title: str | None = None,
                         notes: Sequence[str] = ()) -> str:
    """The leaderboard as a Markdown document (title, table, notes on how to read it)."""
    header, rows = leaderboard_rows(board)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    right = {0, *range(3, len(header))}
    lines = [f"# {title}", ""] if title else []
    lines += [line(header),
              line([("---:" if i in right else ":---") for i in range(len(header))]),
              *(line(r) for r in rows), ""]
    seeds = board.get("seeds") or []
    lines += [
        f"Mean ± std over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}) of the primary "
        "test metric. Δm% = " + board.get("delta_m_convention", DELTA_M_CONVENTION) + "; "
        "each run is compared with single-task baselines trained with the same settings and "
        "seed. MR = mean rank over tasks among the methods above (1 = best; ties share the "
        f"average rank). step ÷ {board.get('reference', 'ew')} = median step time relative to "
        f"{board.get('reference', 'ew')} on the same architecture.",
        *[f"\n{note}" for note in notes], "",
    ]
    return "\n".join(lines)
