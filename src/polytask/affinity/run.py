"""What `polytask affinity` does: measure, group, and write the answer as files.

    >>> from polytask.bench import bench_config
    >>> from polytask.affinity.run import run_affinity
    >>> outcome = run_affinity(bench_config("planted"), ["grad_cosine", "tag"], max_groups=3,
    ...                        out="affinity/planted")
    >>> outcome.groupings["tag"].by_count[3].groups

For each method: measure the T x T matrix (`polytask.affinity.get(name).measure`), then
search the best partition into k = 1..K groups (`best_partitions`). Files written into `out`
(each atomically; the `configs` folder is replaced as a whole):

- ``affinity.json``: per method, the matrix with its definition, direction and seconds;
- ``groups.json``: per method, the best partition for each k with its predicted score, the
  search used and its seconds, and, when the config is a suite that knows its planted
  partition, the adjusted Rand index of each partition against it;
- ``configs/<method>-k<k>-group<i>.yaml`` for k = 2..K: the config restricted to one group
  (``only:``), ready for ``polytask train``;
- ``report.html`` (+ one PNG per figure): a heatmap per method, ordered by a hierarchical
  clustering of the tasks with its dendrogram;
- ``sources-<target>.json`` with `target`: the other tasks ranked as sources for it.

Method run folders (the short joint runs, the cached pair runs) go to ``out/work``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from polytask.affinity.base import AFFINITY, AffinityMatrix
from polytask.affinity.grouping import GroupingResult, best_partitions, rank_sources
from polytask.affinity.taskweb import taskshop_scores
from polytask.config import RunConfig
from polytask.errors import ConfigError
from polytask.files import atomic_write_text, inside, writing
from polytask.pipeline import resolve
from polytask.suites import load_suite

__all__ = ["DEFAULT_GROUPS", "DEFAULT_METHODS", "AffinityOutcome", "group_configs",
           "method_options", "run_affinity", "sources_table", "summary_table",
           "true_partition"]

DEFAULT_METHODS = ["grad_cosine", "tag"]
DEFAULT_GROUPS = 3


@dataclass
class AffinityOutcome:
    """What one `run_affinity` measured and wrote."""

    tasks: list[str]
    matrices: dict[str, AffinityMatrix]
    groupings: dict[str, GroupingResult]
    true_groups: list[list[str]] | None
    #: method -> k -> adjusted Rand index against `true_groups` (disjoint groups only)
    adjusted_rand: dict[str, dict[int, float]] = field(default_factory=dict)
    #: method -> ranked (source, score), for `target`
    sources: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    target: str | None = None
    files: dict[str, Path] = field(default_factory=dict)


# --------------------------------------------------------------------------- inputs


def method_options(items: Sequence[str], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`--option METHOD.KEY=VALUE` items (values are YAML) as method -> {key: value}."""
    options: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"--option {item!r}: expected METHOD.KEY=VALUE, e.g. tag.every=10")
        if method not in methods:
            raise ConfigError(f"--option {item!r}: {method!r} is not one of the --methods "
                              f"({', '.join(methods)}); add it to --methods or drop the option")
        try:
            options.setdefault(method, {})[name] = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise ConfigError(f"--option {item!r}: the value is not valid YAML: {error}") from None
    return options


def _build_methods(names: Sequence[str], options: Mapping[str, Mapping[str, Any]]) -> dict:
    """Each named method built with its options; errors name the method and the option."""
    if not names:
        raise ConfigError("--methods: give at least one method, e.g. --methods grad_cosine,tag")
    built = {}
    for name in names:
        if name not in AFFINITY:
            raise ConfigError(f"--methods: {AFFINITY.unknown_message(name)}")
        try:
            built[name] = AFFINITY.get(name)(**options.get(name, {}))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"--option for {name}: {error}") from None
    return built


def true_partition(config: RunConfig) -> list[list[str]] | None:
    """The planted partition of the config's tasks, when its suite knows one (and the config
    does not list its own tasks), restricted to the tasks it trains (`only`)."""
    if config.suite is None or config.tasks:
        return None
    groups = load_suite(config.suite.name, **config.suite.options).true_groups
    if groups is None:
        return None
    kept = {task.name for task in resolve(config).tasks}
    restricted = [[t for t in group if t in kept] for group in groups]
    return [group for group in restricted if group]


def _adjusted_rand(truth: list[list[str]], groups: list[list[str]]) -> float:
    from sklearn.metrics import adjusted_rand_score

    true_label = {task: i for i, group in enumerate(truth) for task in group}
    found_label = {task: i for i, group in enumerate(groups) for task in group}
    tasks = sorted(true_label)
    return float(adjusted_rand_score([true_label[t] for t in tasks],
                                     [found_label[t] for t in tasks]))


# --------------------------------------------------------------------------- outputs


def group_configs(config: RunConfig, name: str, method: str, grouping: GroupingResult,
                  ) -> dict[str, dict[str, Any]]:
    """File name -> config (plain data) for every group of every k ≥ 2: the config (its
    non-default settings) with ``only: [the group's tasks]`` and its own run name. Data
    paths are absolute, so the files run from any folder."""
    base = config.model_dump(mode="json", exclude_none=True, exclude_defaults=True,
                             fallback=lambda value: "<in-memory>")
    train = dict(base.get("train") or {})
    train.pop("progress", None)  # `polytask bench` turns progress off; a user's run shows it
    base["train"] = train
    files = {}
    for k, partition in grouping.by_count.items():
        if k < 2:
            continue
        for index, group in enumerate(partition.groups, 1):
            stem = f"{method}-k{k}-group{index}"
            files[f"{stem}.yaml"] = {**base, "name": f"{name}-{stem}", "only": list(group)}
    return files


def _write_json(path: Path, document: Any) -> Path:
    atomic_write_text(path, json.dumps(document, indent=1, allow_nan=False) + "\n")
    return path


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _groups_document(outcome: AffinityOutcome, max_groups: int, overlap: bool,
                     ) -> dict[str, Any]:
    methods = {}
    for method, grouping in outcome.groupings.items():
        ari = outcome.adjusted_rand.get(method, {})
        by_count = {}
        for k, partition in grouping.by_count.items():
            entry: dict[str, Any] = {"groups": partition.groups,
                                     "score": _finite(partition.score)}
            if k in ari:
                entry["adjusted_rand_index"] = ari[k]
            entry["configs"] = [f"configs/{method}-k{k}-group{i}.yaml"
                                for i in range(1, len(partition.groups) + 1)] if k > 1 else []
            by_count[str(k)] = entry
        truth_k = len(outcome.true_groups) if outcome.true_groups else None
        methods[method] = {
            "search": grouping.search, "seconds": round(grouping.seconds, 4),
            "adjusted_rand_index": ari.get(truth_k) if truth_k is not None else None,
            "by_count": by_count,
        }
    return {
        "tasks": outcome.tasks, "max_groups": max_groups, "overlap": overlap,
        "score": "total within-group affinity of the symmetrised matrix (A + Aᵀ)/2"
                 if not overlap else "TAG: Σ_t max over t's groups of the mean affinity onto t",
        "true_groups": outcome.true_groups,
        "adjusted_rand_index": "at k = the number of true groups (sklearn "
                               "adjusted_rand_score); per k under by_count"
                               if outcome.adjusted_rand else None,
        "methods": methods,
    }


def _write_configs(out: Path, configs: Mapping[str, Mapping[str, Any]]) -> None:
    """Replace ``out/configs`` with the given files, as a whole (no stale file survives)."""
    with writing(out / "configs") as tmp:
        tmp.mkdir()
        for file_name, document in configs.items():
            (tmp / file_name).write_text(yaml.safe_dump(dict(document), sort_keys=False),
                                         encoding="utf-8")


def _rank(method: str, matrix: AffinityMatrix, target: str) -> list[tuple[str, float]]:
    """TaskShop's estimate for taskweb (transfer through pivot tasks), else the direct
    affinity A[source][target]."""
    return taskshop_scores(matrix, target) if method == "taskweb" else rank_sources(matrix,
                                                                                    target)


# --------------------------------------------------------------------------- the run


def run_affinity(config: RunConfig, methods: Sequence[str] = DEFAULT_METHODS,
                 max_groups: int = DEFAULT_GROUPS, out: str | Path = "affinity/run", *,
                 name: str = "run", options: Mapping[str, Mapping[str, Any]] | None = None,
                 overlap: bool = False, target: str | None = None, report: bool = True,
                 console: Console | None = None) -> AffinityOutcome:
    """Measure each method's affinity matrix on `config`, group the tasks into 1..`max_groups`
    groups, and write the files listed in the module docstring into `out`.

    `name` prefixes the run names of the per-group configs; `options` holds each method's
    constructor keywords (`method_options`); `overlap` lets a task sit in several groups
    (TAG's selection; no adjusted Rand index then: it compares partitions); `target` also
    ranks the other tasks as sources for that task.

    Raises:
        ConfigError: an unknown method or option, `max_groups` below 1, or a `target` that is
            not one of the config's tasks; all before any training.
    """
    console = console or Console(stderr=True)
    out = Path(out)
    if max_groups < 1:
        raise ConfigError(f"--groups: must be at least 1 (got {max_groups})")
    built = _build_methods(list(dict.fromkeys(methods)), options or {})
    tasks = [task.name for task in resolve(config).tasks]
    if target is not None and target not in tasks:
        raise ConfigError(f"--target {target!r} is not a task of this config; choose one of: "
                          f"{', '.join(tasks)}")
    truth = true_partition(config)
    outcome = AffinityOutcome(tasks, {}, {}, truth, target=target)
    for method, measurer in built.items():
        console.print(f"affinity {method}: measuring {len(tasks)} tasks ...", highlight=False)
        started = time.perf_counter()
        matrix = measurer.measure(config, out / "work", console)
        grouping = best_partitions(matrix, max_groups, overlap=overlap)
        outcome.matrices[method], outcome.groupings[method] = matrix, grouping
        if truth is not None and not overlap:  # the index compares partitions only
            outcome.adjusted_rand[method] = {k: _adjusted_rand(truth, p.groups)
                                             for k, p in grouping.by_count.items()}
        if target is not None:
            outcome.sources[method] = _rank(method, matrix, target)
        console.print(f"affinity {method}: measured in {time.perf_counter() - started:.1f}s; "
                      f"grouping search ({grouping.search}) {grouping.seconds:.3f}s",
                      highlight=False)
    _write_outputs(outcome, config, out, name, max_groups, overlap, report)
    return outcome


def _write_outputs(outcome: AffinityOutcome, config: RunConfig, out: Path, name: str,
                   max_groups: int, overlap: bool, report: bool) -> None:
    configs: dict[str, dict[str, Any]] = {}
    for method, grouping in outcome.groupings.items():
        configs.update(group_configs(config, name, method, grouping))
    outcome.files["affinity.json"] = _write_json(out / "affinity.json", {
        "tasks": outcome.tasks,
        "direction": "values[i][j]: how much task i (source, row) helps task j (target, "
                     "column); the diagonal is null",
        "methods": {m: matrix.to_json() for m, matrix in outcome.matrices.items()},
    })
    outcome.files["groups.json"] = _write_json(
        out / "groups.json", _groups_document(outcome, max_groups, overlap))
    _write_configs(out, configs)
    outcome.files["configs"] = out / "configs"
    if outcome.target is not None:
        path = inside(out, f"sources-{outcome.target}.json")
        outcome.files[path.name] = _write_json(path, {
            "target": outcome.target,
            "ranking": {m: "taskshop (through pivot tasks)" if m == "taskweb"
                        else "direct affinity A[source][target]" for m in outcome.sources},
            "methods": {m: [{"source": s, "score": _finite(v)} for s, v in ranked]
                        for m, ranked in outcome.sources.items()},
        })
    if report:
        from polytask.affinity._report import write_affinity_report

        outcome.files["report.html"] = write_affinity_report(out, outcome)


# --------------------------------------------------------------------------- printing


def _groups_text(groups: list[list[str]]) -> str:
    return " | ".join(" ".join(group) for group in groups)


def summary_table(outcome: AffinityOutcome, max_groups: int) -> Table:
    """Per method: seconds (measuring + grouping search), the best k-group partition, its
    predicted score and its ARI against the planted partition (when known)."""
    k = min(max_groups, len(outcome.tasks))
    searches = sorted({g.search for g in outcome.groupings.values()})
    table = Table(title=f"task affinity · {len(outcome.tasks)} tasks · best {k} groups · "
                        f"{', '.join(searches)} search")
    columns = ["method", "seconds", f"groups (k={k})", "score"]
    if outcome.adjusted_rand:
        columns.append("ARI")
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index in (0, 2) else "right",
                         overflow="fold")
    for method, grouping in outcome.groupings.items():
        partition = grouping.by_count[k]
        row = [method, f"{outcome.matrices[method].seconds:.1f} + {grouping.seconds:.2f}",
               _groups_text(partition.groups), f"{partition.score:.4g}"]
        if outcome.adjusted_rand:
            row.append(f"{outcome.adjusted_rand[method][k]:.2f}")
        table.add_row(*row)
    return table


def sources_table(outcome: AffinityOutcome) -> Table:
    """The ranked sources for the target: one column pair (task, score) per method."""
    table = Table(title=f"source tasks for {outcome.target} (best first)")
    table.add_column("#", justify="right")
    for method in outcome.sources:
        table.add_column(method)
        table.add_column("score", justify="right")
    rows = max((len(r) for r in outcome.sources.values()), default=0)
    for position in range(rows):
        cells = [str(position + 1)]
        for ranked in outcome.sources.values():
            source, score = ranked[position]
            cells += [source, f"{score:+.4g}" if math.isfinite(score) else "–"]
        table.add_row(*cells)
    return table
