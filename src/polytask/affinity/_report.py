"""`report.html` of `polytask affinity`: per method, the affinity heatmap in task order, and
the same matrix ordered by a hierarchical clustering of the tasks with its dendrogram.

Figures follow `polytask.evaluate.plots` (matplotlib's object API on the Agg canvas, PNG
without metadata) and the page follows `polytask.evaluate.report` (figures embedded as base64
PNG, also written beside the page). Imported lazily: matplotlib and scipy take seconds.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.cluster.hierarchy import dendrogram, linkage
from scipy.spatial.distance import squareform

from polytask.affinity.base import AffinityMatrix
from polytask.evaluate.plots import png_bytes
from polytask.evaluate.report import STYLE
from polytask.files import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from polytask.affinity.run import AffinityOutcome

__all__ = ["affinity_figure", "cluster_order", "write_affinity_report"]


def cluster_order(matrix: AffinityMatrix) -> tuple[list[int], np.ndarray | None]:
    """Task order from an average-linkage clustering of the symmetrised affinity (distance
    max(S) − S, so the most affine tasks merge first), and the linkage (None for < 3 tasks)."""
    symmetric = matrix.symmetrised()
    size = len(symmetric)
    if size < 3:
        return list(range(size)), None
    distance = symmetric.max() - symmetric
    np.fill_diagonal(distance, 0.0)
    tree = linkage(squareform(distance, checks=False), method="average")
    return [int(i) for i in dendrogram(tree, no_plot=True)["leaves"]], tree


def _heatmap(axis: Any, values: np.ndarray, names: list[str], limit: float,
             title: str) -> Any:
    image = axis.imshow(np.ma.masked_invalid(values), cmap="RdBu", vmin=-limit, vmax=limit)
    image.cmap.set_bad("#dddddd")
    axis.set_xticks(range(len(names)))
    axis.set_yticks(range(len(names)))
    small = 8 if len(names) <= 8 else 6
    axis.set_xticklabels(names, rotation=60, ha="right", fontsize=small)
    axis.set_yticklabels(names, fontsize=small)
    axis.set_xlabel("target task", fontsize=9)
    axis.set_ylabel("source task", fontsize=9)
    axis.set_title(title, fontsize=10)
    if len(names) <= 10:
        for i in range(len(names)):
            for j in range(len(names)):
                if np.isfinite(values[i, j]):
                    axis.text(j, i, f"{values[i, j]:.2g}", ha="center", va="center", fontsize=6)
    return image


def affinity_figure(matrix: AffinityMatrix) -> Figure:
    """Left: the matrix in task order (row = source, column = target; blue = helps, red =
    hurts, grey = undefined). Right: the dendrogram of `cluster_order` over the matrix in
    that order, so groups show as blue blocks on the diagonal."""
    values = matrix.array()
    finite = np.abs(values[np.isfinite(values)])
    limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    size = len(matrix.tasks)
    side = max(3.2, min(9.0, 0.42 * size + 1.8))
    figure = Figure(figsize=(2 * side + 1.2, side + 1.6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subfigures(1, 2)
    left_axis = left.subplots()
    image = _heatmap(left_axis, values, matrix.tasks, limit, "task order")
    left.colorbar(image, ax=left_axis, shrink=0.8, label=f"{matrix.method} affinity")
    order, tree = cluster_order(matrix)
    if tree is None:
        ordered_axis = right.subplots()
    else:
        top, ordered_axis = right.subplots(2, 1, height_ratios=[1, 3])
        dendrogram(tree, ax=top, no_labels=True, color_threshold=0,
                   above_threshold_color="#4477AA")
        top.set_yticks([])
        for spine in top.spines.values():
            spine.set_visible(False)
        top.set_title("hierarchical clustering (average linkage on max(S) − S)", fontsize=9)
    ordered = values[np.ix_(order, order)]
    _heatmap(ordered_axis, ordered, [matrix.tasks[i] for i in order], limit, "clustered order")
    ordered_axis.set_aspect("auto")  # as wide as the dendrogram above it: leaves over columns
    figure.suptitle(f"{matrix.method}: {matrix.direction}", fontsize=11)
    return figure


def _groups_table(outcome: AffinityOutcome, method: str) -> str:
    grouping = outcome.groupings[method]
    ari = outcome.adjusted_rand.get(method, {})
    header = "<tr><th>k</th><th class=l>groups</th><th>predicted score</th>" + (
        "<th>ARI vs planted</th>" if ari else "") + "</tr>"
    rows = []
    for k, partition in grouping.by_count.items():
        groups = " &nbsp; ".join("{" + html.escape(", ".join(g)) + "}" for g in partition.groups)
        cells = f"<td>{k}</td><td class=l>{groups}</td><td>{partition.score:.4g}</td>"
        if ari:
            cells += f"<td>{ari[k]:.2f}</td>"
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><thead>{header}</thead><tbody>{''.join(rows)}</tbody></table>"


def _method_section(out: Path, outcome: AffinityOutcome, method: str) -> str:
    matrix = outcome.matrices[method]
    grouping = outcome.groupings[method]
    data = png_bytes(affinity_figure(matrix))
    atomic_write_bytes(out / f"affinity-{method}.png", data)
    encoded = base64.b64encode(data).decode("ascii")
    return (
        f'<section id="{html.escape(method)}"><h2>{html.escape(method)}</h2>'
        f'<p class="note">{html.escape(matrix.definition)}. Direction: '
        f"{html.escape(matrix.direction)}. Measured in {matrix.seconds:.1f} s; grouping "
        f"search {html.escape(grouping.search)} in {grouping.seconds:.3f} s.</p>"
        f"{_groups_table(outcome, method)}"
        f'<img alt="{html.escape(method)} affinity" src="data:image/png;base64,{encoded}">'
        "</section>"
    )


def write_affinity_report(out: Path, outcome: AffinityOutcome) -> Path:
    """Write ``out/report.html`` and one ``affinity-<method>.png`` per method."""
    truth = ("Planted partition: " + " ".join("{" + ", ".join(g) + "}"
                                             for g in outcome.true_groups)
             if outcome.true_groups else "")
    sections = [_method_section(out, outcome, method) for method in outcome.matrices]
    title = f"Task affinity · {len(outcome.tasks)} tasks"
    body = (f"<h1>{html.escape(title)}</h1><p class=\"meta\">Methods: "
            f"{html.escape(', '.join(outcome.matrices))}. Rows are source tasks, columns "
            "target tasks. Groups maximise the total within-group affinity (see groups.json)."
            f"{'<br>' + html.escape(truth) if truth else ''}</p>\n" + "\n".join(sections))
    path = out / "report.html"
    atomic_write_text(path, f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
                            f"<body>\n{body}\n<p class=\"note\">Generated by polytask affinity; "
                            "figures are also saved as PNG files beside this page.</p>"
                            "</body></html>\n")
    return path
