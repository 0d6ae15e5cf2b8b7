"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no pyplot, no
global backend switch, no display needed). Each function returns a `Figure`, or None when
the run did not record what the figure shows."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

Record = Mapping[str, Any]

COLOURS = ["#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#BBBBBB",
           "#000000", "#EE7733", "#0077BB", "#33BBEE", "#EE3377", "#CC3311", "#009988"]


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _grid(figure: Figure, count: int, columns: int = 4) -> list[Any]:
    cols = min(count, columns)
    rows = math.ceil(count / cols)
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    for extra in axes[count:]:
        extra.set_visible(False)
    return list(axes[:count])


def _grid_size(count: int, columns: int = 4, cell: tuple[float, float] = (3.3, 2.6),
               ) -> tuple[float, float]:
    cols = min(count, columns)
    return cell[0] * cols + 0.4, cell[1] * math.ceil(count / cols) + 0.6


def png_bytes(figure: Figure) -> bytes:
    """The figure as PNG bytes (no timestamp or version in the metadata: stable output)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _series(records: Sequence[Record], key: str) -> tuple[np.ndarray, np.ndarray]:
    points = [(r["step"], r[key]) for r in records
              if key in r and r[key] is not None and math.isfinite(r[key])]
    if not points:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*points, strict=True)
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def _smooth(values: np.ndarray, weight: float = 0.8) -> np.ndarray:
    out = np.empty_like(values)
    last = values[0] if len(values) else 0.0
    for i, value in enumerate(values):
        last = weight * last + (1 - weight) * value
        out[i] = last
    return out


def train_loss_figure(train: Sequence[Record], tasks: Sequence[str]) -> Figure | None:
    """One panel per task: the logged training loss (faint) and its moving average."""
    tasks = [t for t in tasks if len(_series(train, f"loss/{t}")[0])]
    if not tasks:
        return None
    figure = _figure(*_grid_size(len(tasks)))
    for axis, task in zip(_grid(figure, len(tasks)), tasks, strict=True):
        steps, values = _series(train, f"loss/{task}")
        axis.plot(steps, values, color=COLOURS[0], alpha=0.3, linewidth=1)
        axis.plot(steps, _smooth(values), color=COLOURS[0], linewidth=1.8)
        axis.set_title(task, fontsize=10)
        axis.set_xlabel("step")
        axis.set_ylabel("train loss")
        if len(values) and values.min() > 0 and values.max() / values.min() > 50:
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
    figure.suptitle("Training loss per task")
    return figure


def validation_figure(validation: Sequence[Record], metrics: Mapping[str, str],
                      higher_is_better: Mapping[str, bool],
                      test: Mapping[str, float] | None = None) -> Figure | None:
    """One panel per task: its primary metric on validation at every evaluation, the best
    evaluation marked, and the final test value as a dashed line."""
    tasks = [t for t, m in metrics.items() if len(_series(validation, f"{t}/{m}")[0])]
    if not tasks:
        return None
    figure = _figure(*_grid_size(len(tasks)))
    for axis, task in zip(_grid(figure, len(tasks)), tasks, strict=True):
        metric = metrics[task]
        steps, values = _series(validation, f"{task}/{metric}")
        axis.plot(steps, values, marker="o", markersize=3, color=COLOURS[2], label="validation")
        best = int(np.argmax(values) if higher_is_better.get(task, True) else np.argmin(values))
        axis.plot([steps[best]], [values[best]], marker="*", markersize=11, color=COLOURS[1],
                  linestyle="none", label="best")
        if test and test.get(task) is not None:
            axis.axhline(test[task], color=COLOURS[7], linestyle="--", linewidth=1, label="test")
        arrow = "↑" if higher_is_better.get(task, True) else "↓"
        axis.set_title(f"{task} · {metric} {arrow}", fontsize=10)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="best")
    figure.suptitle("Validation metric per task")
    return figure


def weights_figure(train: Sequence[Record], tasks: Sequence[str]) -> Figure | None:
    """Each task's loss weight over training (None when no weights were logged, or every
    weight stayed at one constant, as with equal weighting)."""
    series = {t: _series(train, f"weight/{t}") for t in tasks}
    series = {t: s for t, s in series.items() if len(s[0])}
    if not series:
        return None
    every = np.concatenate([s[1] for s in series.values()])
    if np.allclose(every, every[0]):
        return None
    figure = _figure(7.5, 3.6)
    axis = figure.subplots()
    for i, (task, (steps, values)) in enumerate(series.items()):
        axis.plot(steps, values, label=task, color=COLOURS[i % len(COLOURS)], linewidth=1.5)
    axis.set_xlabel("step")
    axis.set_ylabel("task weight")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, ncol=max(1, math.ceil(len(series) / 8)), loc="best")
    figure.suptitle("Task weights over training")
    return figure


def cosine_pairs(train: Sequence[Record]) -> list[tuple[str, str]]:
    pairs: dict[tuple[str, str], None] = {}
    for record in train:
        for key in record:
            if key.startswith("cosine/"):
                parts = key.split("/")
                if len(parts) == 3:
                    pairs[(parts[1], parts[2])] = None
    return list(pairs)


def cosine_figure(train: Sequence[Record], tasks: Sequence[str]) -> Figure | None:
    """Pairwise cosine similarity of the task gradients: a task-pair x step heatmap (red =
    conflicting, blue = aligned) and the mean over training as a task x task matrix."""
    pairs = cosine_pairs(train)
    if not pairs:
        return None
    records = [r for r in train if any(f"cosine/{a}/{b}" in r for a, b in pairs)]
    steps = [r["step"] for r in records]
    grid = np.full((len(pairs), len(records)), np.nan)
    for j, record in enumerate(records):
        for i, (a, b) in enumerate(pairs):
            value = record.get(f"cosine/{a}/{b}")
            if value is not None:
                grid[i, j] = value
    names = [t for t in tasks if any(t in p for p in pairs)] or sorted({*sum(pairs, ())})
    index = {t: i for i, t in enumerate(names)}
    matrix = np.eye(len(names))
    for i, (a, b) in enumerate(pairs):
        if a in index and b in index:
            mean = float(np.nanmean(grid[i])) if np.isfinite(grid[i]).any() else np.nan
            matrix[index[a], index[b]] = matrix[index[b], index[a]] = mean
    height = max(3.2, min(12.0, 0.28 * len(pairs) + 1.6))
    figure = _figure(11.0, height)
    left, right = figure.subplots(1, 2, width_ratios=[2.2, 1])
    image = left.imshow(grid, aspect="auto", cmap="RdBu", vmin=-1, vmax=1,
                        interpolation="nearest",
                        extent=(steps[0] - 0.5, steps[-1] + 0.5, len(pairs) - 0.5, -0.5)
                        if len(steps) > 1 else None)
    left.set_yticks(range(len(pairs)))
    left.set_yticklabels([f"{a} / {b}" for a, b in pairs],
                         fontsize=8 if len(pairs) <= 20 else 5)
    left.set_xlabel("step")
    left.set_title("over training", fontsize=10)
    right.imshow(matrix, cmap="RdBu", vmin=-1, vmax=1)
    right.set_xticks(range(len(names)))
    right.set_yticks(range(len(names)))
    small = 8 if len(names) <= 6 else 5
    right.set_xticklabels(names, rotation=45, ha="right", fontsize=small)
    right.set_yticklabels(names, fontsize=small)
    if len(names) <= 8:
        for i in range(len(names)):
            for j in range(len(names)):
                if i != j and np.isfinite(matrix[i, j]):
                    right.text(j, i, f"{matrix[i, j]:+.2f}", ha="center", va="center",
                               fontsize=7)
    right.set_title("mean over training", fontsize=10)
    figure.colorbar(image, ax=[left, right], shrink=0.8, label="cosine")
    figure.suptitle("Pairwise gradient cosine (shared parameters)")
    return figure


def single_vs_multi_figure(results: Mapping[str, Any]) -> Figure | None:
    """Per task: the single-task baseline and the multi-task test value, with the change."""
    tasks = results.get("tasks") or {}
    if not tasks:
        return None
    figure = _figure(*_grid_size(len(tasks), cell=(2.8, 2.8)))
    for axis, (name, task) in zip(_grid(figure, len(tasks)), tasks.items(), strict=True):
        labels, values, colours = [], [], []
        if task.get("baseline") is not None:
            labels.append("single-task")
            values.append(task["baseline"])
            colours.append(COLOURS[6])
        labels.append("multi-task")
        values.append(task["value"])
        colours.append(COLOURS[0])
        bars = axis.bar(labels, values, color=colours, width=0.6)
        axis.bar_label(bars, fmt="%.4g", fontsize=8)
        _zoom(axis, values)
        arrow = "↑" if task["higher_is_better"] else "↓"
        change = task.get("change_pct")
        suffix = "" if change is None else f"\nchange {change:+.2f}%"
        axis.set_title(f"{name} · {task['metric']} {arrow}{suffix}", fontsize=10)
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle("Multi-task vs single-task (test)")
    return figure


def pareto_front_figure(front: Mapping[str, Any]) -> Figure | None:
    """A palora run's front (pareto.json): for each pair of tasks, the primary metric of one
    against the other at each evaluated preference, coloured by the first task's weight."""
    tasks = front.get("tasks") or {}
    points = front.get("points") or []
    if len(tasks) < 2 or not points:
        return None
    pairs = [(a, b) for i, a in enumerate(tasks) for b in list(tasks)[i + 1:]]
    figure = _figure(*_grid_size(len(pairs), columns=3, cell=(3.6, 3.2)))
    for axis, (first, second) in zip(_grid(figure, len(pairs), columns=3), pairs, strict=True):
        x = [p["metrics"][first][tasks[first]["metric"]] for p in points]
        y = [p["metrics"][second][tasks[second]["metric"]] for p in points]
        weight = [p["preference"][first] for p in points]
        axis.plot(x, y, color=COLOURS[6], linewidth=1, zorder=1)
        dots = axis.scatter(x, y, c=weight, cmap="viridis", vmin=0, vmax=1, zorder=2)
        for name, set_label in ((first, axis.set_xlabel), (second, axis.set_ylabel)):
            arrow = "↑" if tasks[name]["higher_is_better"] else "↓"
            set_label(f"{name} · {tasks[name]['metric']} {arrow}", fontsize=9)
        axis.grid(alpha=0.3)
        figure.colorbar(dots, ax=axis, label=f"preference for {first}")
    figure.suptitle(f"Pareto front over preferences ({front.get('split', 'test')})")
    return figure


def _zoom(axis: Any, values: Sequence[float], errors: Sequence[float] | None = None) -> None:
    """Bars of close values: start the axis near them so the difference is visible."""
    lows = [v - (e or 0) for v, e in zip(values, errors or [0] * len(values), strict=True)]
    highs = [v + (e or 0) for v, e in zip(values, errors or [0] * len(values), strict=True)]
    low, high = min(lows), max(highs)
    axis.ticklabel_format(axis="y", useOffset=False)
    if len(values) > 1 and low > 0 and (high - low) < 0.5 * high:
        span = max(high - low, 0.02 * high)
        axis.set_ylim(max(0.0, low - 0.6 * span), high + 0.35 * span)


def _method_colours(methods: Sequence[Mapping[str, Any]]) -> list[str]:
    architectures = list(dict.fromkeys(m["architecture"] for m in methods))
    return [COLOURS[architectures.index(m["architecture"]) % len(COLOURS)] for m in methods]


def _legend_by_architecture(axis: Any, methods: Sequence[Mapping[str, Any]]) -> None:
    from matplotlib.patches import Patch

    architectures = list(dict.fromkeys(m["architecture"] for m in methods))
    if len(architectures) > 1:
        axis.legend(handles=[Patch(color=COLOURS[i % len(COLOURS)], label=a)
                             for i, a in enumerate(architectures)], fontsize=8, loc="best")


def delta_m_figure(board: Mapping[str, Any]) -> Figure | None:
    """Δm% per method, mean ± std over seeds, best first, coloured by architecture."""
    methods = [m for m in board["methods"] if m["delta_m"]["mean"] is not None]
    if not methods:
        return None
    figure = _figure(max(5.5, 0.55 * len(methods) + 2), 4.2)
    axis = figure.subplots()
    means = [m["delta_m"]["mean"] for m in methods]
    errors = [m["delta_m"]["std"] or 0.0 for m in methods]
    axis.bar(range(len(methods)), means, yerr=errors, capsize=4,
             color=_method_colours(methods), edgecolor="black", linewidth=0.5)
    axis.axhline(0, color="black", linewidth=1)
    axis.set_xticks(range(len(methods)))
    axis.set_xticklabels([m["name"] for m in methods], rotation=40, ha="right", fontsize=8)
    axis.set_ylabel("Δm% (positive = better than single-task)")
    axis.grid(axis="y", alpha=0.3)
    _legend_by_architecture(axis, methods)
    figure.suptitle(f"Δm% by method (mean ± std over {len(board.get('seeds', []))} seeds)")
    return figure


def per_task_figure(board: Mapping[str, Any]) -> Figure | None:
    """Per task: each method's test metric (mean ± std) against the single-task baseline."""
    methods = board["methods"]
    tasks = board["tasks"]
    if not methods or not tasks:
        return None
    figure = _figure(*_grid_size(len(tasks), columns=3,
                                 cell=(max(3.6, 0.35 * len(methods) + 1.5), 3.4)))
    colours = _method_colours(methods)
    for axis, (task, info) in zip(_grid(figure, len(tasks), 3), tasks.items(), strict=True):
        means = [m["tasks"][task]["mean"] for m in methods]
        errors = [m["tasks"][task]["std"] or 0.0 for m in methods]
        axis.bar(range(len(methods)), means, yerr=errors, capsize=3, color=colours,
                 edgecolor="black", linewidth=0.5)
        single = (board.get("single_task") or {}).get(task, {})
        shown = list(means)
        if single.get("mean") is not None:
            axis.axhline(single["mean"], color="black", linestyle="--", linewidth=1.2,
                         label="single-task")
            if single.get("std"):
                axis.axhspan(single["mean"] - single["std"], single["mean"] + single["std"],
                             color="grey", alpha=0.2)
            shown.append(single["mean"])
            axis.legend(fontsize=7, loc="lower right")
        _zoom(axis, shown, [*errors, single.get("std") or 0.0][:len(shown)])
        axis.set_xticks(range(len(methods)))
        axis.set_xticklabels([m["name"] for m in methods], rotation=50, ha="right", fontsize=7)
        arrow = "↑" if info["higher_is_better"] else "↓"
        axis.set_title(f"{task} · {info['metric']} {arrow}", fontsize=10)
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle("Per-task test metric: multi-task methods vs single-task (dashed)")
    return figure


def cost_figure(board: Mapping[str, Any]) -> Figure | None:
    """Δm% against step time relative to the reference balancer: what each gain costs."""
    methods = [m for m in board["methods"]
               if m["delta_m"]["mean"] is not None and m.get("step_time_ratio") is not None]
    if len(methods) < 2:
        return None
    figure = _figure(6.5, 4.2)
    axis = figure.subplots()
    colours = _method_colours(methods)
    for method, colour in zip(methods, colours, strict=True):
        axis.errorbar(method["step_time_ratio"], method["delta_m"]["mean"],
                      yerr=method["delta_m"]["std"] or 0.0, fmt="o", color=colour, capsize=3)
        axis.annotate(method["balancer"], (method["step_time_ratio"], method["delta_m"]["mean"]),
                      textcoords="offset points", xytext=(5, 4), fontsize=8)
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_xlabel(f"median step time ÷ {board.get('reference', 'ew')} (same architecture)")
    axis.set_ylabel("Δm% (mean ± std)")
    axis.grid(alpha=0.3)
    _legend_by_architecture(axis, methods)
    figure.suptitle("Gain vs cost")
    return figure


def _sweep_axis(points: Sequence[Mapping[str, Any]]) -> tuple[str, list[Any]] | None:
    """The one hyperparameter that varies over a sweep, when it is numeric (a λ-sweep)."""
    keys = [k for k in points[0]["hyperparameters"]
            if len({repr(p["hyperparameters"][k]) for p in points}) > 1]
    values = [p["hyperparameters"][k] for p in points for k in keys]
    if len(keys) != 1 or not all(isinstance(v, int | float) for v in values):
        return None
    return keys[0], values


def merge_sweep_figure(results: Mapping[str, Any]) -> Figure | None:
    """One panel per merging method with more than one grid point: the validation relative
    change against the experts of every task (thin) and their mean (bold, the selection
    score) at each point; a line over the hyperparameter when only one numeric one varies
    (task_arithmetic's λ), else one tick per point. The chosen point is starred."""
    sweeps = {m: s for m, s in (results.get("sweeps") or {}).items() if len(s) > 1}
    reference = results.get("experts_validation") or {}
    if not sweeps:
        return None
    figure = _figure(*_grid_size(len(sweeps), columns=3, cell=(4.2, 3.2)))
    for axis, (method, points) in zip(_grid(figure, len(sweeps), 3), sweeps.items(),
                                      strict=True):
        found = _sweep_axis(points)
        if found is None:
            xs: list[Any] = list(range(len(points)))
            axis.set_xticks(xs)
            axis.set_xticklabels([", ".join(f"{k}={v}" for k, v in p["hyperparameters"].items())
                                  for p in points], rotation=40, ha="right", fontsize=7)
        else:
            axis.set_xlabel(found[0])
            xs = found[1]
        for i, task in enumerate(reference):
            info = (results.get("tasks") or {}).get(task, {})
            sign = 1 if info.get("higher_is_better", True) else -1
            base = reference[task]
            changes = [sign * 100 * (p["validation"][task] - base) / abs(base) if base else 0.0
                       for p in points]
            axis.plot(xs, changes, marker=".", linewidth=1, alpha=0.7,
                      color=COLOURS[(i + 1) % len(COLOURS)], label=task)
        scores = [p["score"] for p in points]
        axis.plot(xs, scores, marker="o", linewidth=2.2, color=COLOURS[7], label="mean")
        best = int(np.argmax(scores))
        axis.plot([xs[best]], [scores[best]], marker="*", markersize=13, color=COLOURS[1],
                  linestyle="none", label="chosen")
        axis.axhline(0, color="black", linewidth=0.8, linestyle="--")
        axis.set_title(method, fontsize=10)
        axis.set_ylabel("validation Δ% vs experts")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="best")
    figure.suptitle("Validation relative change against the experts over each method's grid")
    return figure


def task_vector_cosine_figure(results: Mapping[str, Any]) -> Figure | None:
    """Heatmap of the pairwise cosine of the task vectors (expert minus base)."""
    cosine = results.get("task_vector_cosine") or {}
    names = cosine.get("tasks") or []
    if len(names) < 2:
        return None
    matrix = np.asarray(cosine["matrix"], dtype=float)
    size = max(3.6, 0.6 * len(names) + 2.2)
    figure = _figure(size + 1.0, size)
    axis = figure.subplots()
    image = axis.imshow(matrix, cmap="RdBu", vmin=-1, vmax=1)
    axis.set_xticks(range(len(names)))
    axis.set_yticks(range(len(names)))
    axis.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    axis.set_yticklabels(names, fontsize=8)
    if len(names) <= 12:
        for i in range(len(names)):
            for j in range(len(names)):
                axis.text(j, i, f"{matrix[i, j]:+.2f}", ha="center", va="center", fontsize=7)
    figure.colorbar(image, ax=axis, shrink=0.8, label="cosine")
    figure.suptitle("Pairwise cosine of the task vectors")
    return figure
