"""Task affinity: what each method costs, whether it finds planted groups, and whether its
groups help on real data.

    python benchmarks/affinity.py [--sections cost,planted,real] [--seeds 3] [--out DIR]

Sections (all on CPU, one thread per run):
- **cost**: each method's measurement as a ratio to one plain joint run of the same config
  and steps (yeast: 14 tasks, MLP; `--cost-steps`, default 200): grad_cosine, tag (its
  default `every: 5`, and `every: 1`), data_map; taskweb (joint mode) on census, 3 tasks, as
  it needs T(T-1)/2 pair runs plus T alone runs. Wall-clock and CPU-time ratios; the runs of
  a method and the plain run alternate, so both see the same machine load (`--repeats`).
- **planted**: on `planted` generated from seeds 0..S-1 (default tasks, groups and noise):
  each method's adjusted Rand index against the planted partition at k = 3, then the
  recovered groups vs all-tasks-together vs single-task (Δm%, training seed 0).
- **real**: yeast (14 tasks, `--yeast-steps` steps) and census (3 tasks, `polytask bench`'s
  census settings): grad_cosine and tag matrices, the groups they choose (k up to 3 on yeast,
  2 on census), and the grouped / together / single-task leaderboard over `--seeds` training
  seeds (Δm% per task and overall).

Prints tables; never asserts. Every run folder (and the single-task baselines cache) goes
under `--out` (default: a temporary folder, removed at the end).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from polytask.affinity import get
from polytask.affinity.run import run_affinity
from polytask.bench import bench_config, run_grouping_bench, task_change_markdown
from polytask.config import RunConfig
from polytask.evaluate.leaderboard import leaderboard_markdown
from polytask.train.trainer import Trainer

QUIET = Console(file=io.StringIO())


def _clock(work: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) spent in `work`."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def _config(source: str, out: Path, *overrides: str, steps: int | None = None) -> RunConfig:
    return bench_config(source, steps, [f"baselines_dir={out / 'baselines'}",
                                        "train.callbacks=[]", *overrides])


def _plain_run(config: RunConfig, steps: int, folder: Path) -> None:
    """One joint training run of `steps` steps with one evaluation, as the methods' runs."""
    train = config.train.model_copy(update={"max_steps": steps, "eval_every": steps,
                                            "checkpoint_every": None, "patience": None})
    shutil.rmtree(folder, ignore_errors=True)
    Trainer(config.model_copy(update={"train": train, "baselines": "none"}), folder,
            console=QUIET).fit()


def _measure(method: str, options: dict[str, Any], config: RunConfig, work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
    get(method, **options).measure(config, work, QUIET)


def cost_section(out: Path, steps: int, repeats: int) -> None:
    print(f"\n## Cost: each method / one plain joint run of the same {steps} steps "
          f"(median of {repeats}; wall-clock ratio, CPU-time ratio)\n")
    rows = [("yeast", "grad_cosine", {"steps": steps}),
            ("yeast", "tag", {"steps": steps}),
            ("yeast", "tag", {"steps": steps, "every": 1}),
            ("yeast", "data_map", {"steps": steps}),
            ("census", "taskweb", {"steps": steps, "mode": "joint"})]
    print("| suite | tasks | method | options | method s | plain s | wall ratio | CPU ratio |")
    print("|---|---:|---|---|---:|---:|---:|---:|")
    warm: set[str] = set()
    for suite, method, options in rows:
        config = _config(suite, out)
        tasks = len(_tasks_of(config))
        if suite not in warm:  # the first run of a process also loads data and imports
            _plain_run(config, steps, out / "plain")
            warm.add(suite)
        walls, cpus, plain_walls = [], [], []
        for _ in range(repeats):
            plain_wall, plain_cpu = _clock(lambda c=config: _plain_run(c, steps, out / "plain"))
            wall, cpu = _clock(lambda c=config, m=method, o=options:
                               _measure(m, o, c, out / "cost-work"))
            walls.append(wall / plain_wall)
            cpus.append(cpu / plain_cpu)
            plain_walls.append(plain_wall)
        shown = ", ".join(f"{k}={v}" for k, v in options.items() if k != "steps") or "defaults"
        print(f"| {suite} | {tasks} | {method} | {shown} | "
              f"{statistics.median(walls) * statistics.median(plain_walls):.1f} | "
              f"{statistics.median(plain_walls):.1f} | {statistics.median(walls):.2f}x | "
              f"{statistics.median(cpus):.2f}x |", flush=True)
    print("\ntaskweb trains T alone runs plus T(T-1)/2 joint pair runs (T(T-1) sequential "
          "ones): 6 runs for census, 105 (joint) or 196 (sequential) for yeast.")


def _tasks_of(config: RunConfig) -> list[str]:
    from polytask.pipeline import resolve

    return [task.name for task in resolve(config).tasks]


def _leaderboard(outcome: Any, title: str) -> None:
    board = outcome.leaderboard
    print(leaderboard_markdown(board, title))
    print(task_change_markdown(board), "\n", flush=True)


def planted_section(out: Path, seeds: int) -> None:
    methods = ["grad_cosine", "tag", "data_map"]
    print("\n## Planted suite (9 tasks, 3 planted groups, noise 0.3): adjusted Rand index at "
          "k = 3, and Δm% of the recovered groups vs all tasks together\n")
    print("| suite seed | " + " | ".join(f"ARI {m}" for m in methods)
          + " | Δm% grouped (tag) | Δm% together | measure s (" + ", ".join(methods) + ") |")
    print("|---:|" + "---:|" * (len(methods) + 3))
    aris: dict[str, list[float]] = {m: [] for m in methods}
    grouped, together = [], []
    for seed in range(seeds):
        folder = out / f"planted-{seed}"
        config = _config("planted", out, f"suite.seed={seed}")
        found = run_affinity(config, methods, 3, folder / "affinity", report=False,
                             console=QUIET)
        bench = run_grouping_bench(config, folder / "affinity" / "groups.json", "tag", 3,
                                   seeds=1, out=folder / "bench", console=QUIET, report=False)
        delta = {m["balancer"]: m["delta_m"]["mean"] for m in bench.leaderboard["methods"]}
        grouped.append(delta["grouped: tag (k=3)"])
        together.append(delta["together"])
        for method in methods:
            aris[method].append(found.adjusted_rand[method][3])
        print(f"| {seed} | " + " | ".join(f"{aris[m][-1]:.2f}" for m in methods)
              + f" | {grouped[-1]:+.2f} | {together[-1]:+.2f} | "
              + ", ".join(f"{found.matrices[m].seconds:.1f}" for m in methods) + " |",
              flush=True)
    print("| mean | " + " | ".join(f"{np.mean(aris[m]):.2f}" for m in methods)
          + f" | {np.mean(grouped):+.2f} | {np.mean(together):+.2f} | |")


def _matrix_markdown(matrix: Any) -> str:
    names = matrix.tasks
    lines = ["| source \\ target | " + " | ".join(names) + " |",
             "|---|" + "---:|" * len(names)]
    for name, row in zip(names, matrix.values, strict=True):
        cells = ["–" if np.isnan(v) else f"{v:.3g}" for v in row]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def real_section(out: Path, seeds: int, yeast_steps: int) -> None:
    for suite, groups, steps in (("yeast", 3, yeast_steps), ("census", 2, None)):
        config = _config(suite, out, steps=steps)
        folder = out / suite
        found = run_affinity(config, ["grad_cosine", "tag"], groups, folder / "affinity",
                             report=False, console=QUIET)
        print(f"\n## {suite}: {len(found.tasks)} tasks, {config.train.max_steps} steps, "
              f"batch {config.train.batch_size}\n")
        for method, matrix in found.matrices.items():
            print(f"### {method} ({matrix.seconds:.1f} s): {matrix.definition}\n")
            print(_matrix_markdown(matrix), "\n")
            for k, partition in found.groupings[method].by_count.items():
                print(f"- k={k}: " + " | ".join(" ".join(g) for g in partition.groups)
                      + f"  (score {partition.score:.4g})")
            print()
        bench = run_grouping_bench(config, folder / "affinity" / "groups.json", None, groups,
                                   seeds=seeds, out=folder / "bench", console=QUIET,
                                   report=False)
        _leaderboard(bench, f"{suite}: grouped (k={groups}) vs together vs single-task, "
                            f"{seeds} seed(s)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="cost,planted,real")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cost-steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--yeast-steps", type=int, default=500)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="affinity-bench-"))
    started = time.perf_counter()
    sections = {s.strip() for s in args.sections.split(",")}
    try:
        if "cost" in sections:
            cost_section(out, args.cost_steps, args.repeats)
        if "planted" in sections:
            planted_section(out, args.seeds)
        if "real" in sections:
            real_section(out, args.seeds, args.yeast_steps)
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; "
          f"{json.dumps({'argv': sys.argv[1:]})}")


if __name__ == "__main__":
    main()
