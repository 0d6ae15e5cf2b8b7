"""Multi-task adapters on the offline text suite (issue 9).

MiniLM-L6 (max_length 64) trained through each adapter (the encoder frozen, the adapter and
the heads trained; not frozen embeddings), every task in every step (`sampler: all`, one
mixed-task backbone pass per step), on a subsample of the `text` suite. For each method it
prints the trainable parameters (and their share of the backbone), the median step time as
a ratio to `lora`'s at the same rank, the peak RSS of the process that trained it, the
per-task test accuracy and Δm% against single-task LoRA baselines (same rank, same settings,
same seed), with full fine-tuning as a reference row; then, per adapter, the per-sample
routing ratio: the time of a forward + backward pass over a batch whose rows come from every
task over that of a batch of the same size from one task.

    python benchmarks/adapters.py                       # every adapter, 3 seeds (~30 min, 2 cores)
    python benchmarks/adapters.py --quick               # smoke run: 2 steps on a few rows, 1 seed
    python benchmarks/adapters.py --methods lora,mtl_lora --seeds 1

Settings: rank 8 (alpha 16) on query and value, AdamW at lr 1e-3 for adapters and 5e-5 for
full fine-tuning, `ew`; validation once, at the last step. The issue's targets: every
adapter's step at most 1.5x `lora`'s, mixed / single routing at most 1.2x, trainable
parameters under 3% of the backbone at r = 8.

Every training job runs in a forked child process (so its peak RSS is its own; it includes
the imports the parent made before forking, the same for every row) and leaves a
record in OUT/jobs/<job>.json: a second invocation with the same OUT reuses finished jobs.
Seed 0 of every method runs first; the other seeds follow while `--time-limit` allows (jobs
not started by then print as not run), so the table says how many seeds each row averages.
The script never asserts on timings: read the ratios.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import shutil
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polytask  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)

MIB = 1024  # ru_maxrss is in KiB on Linux
FULL = "full fine-tuning"
TASKS = ("rotten_tomatoes", "bbc_news", "amazon_food")


@dataclass(frozen=True)
class Settings:
    """What every job of one invocation shares."""

    out: Path
    backbone: str
    rank: int
    train_size: int
    eval_size: int
    steps: int
    batch_size: int
    adapter_lr: float
    full_lr: float
    routing_batch: int
    routing_reps: int


@dataclass
class Job:
    """One child process: the LoRA baselines of a seed, or one method trained with a seed."""

    name: str
    kind: str  # "baselines" | "method"
    seed: int
    method: str | None = None
    routing: bool = False


def base_config(settings: Settings, seed: int, method: str | None) -> dict[str, Any]:
    """The run config of `method` (an adapter name; None: full fine-tuning) with `seed`."""
    model: dict[str, Any] = {"backbone": {"type": "hf", "name": settings.backbone,
                                          "max_length": 64}}
    if method is not None:
        model["adapter"] = {"name": method, "r": settings.rank, "alpha": 2.0 * settings.rank}
    return {
        "name": f"adapters-{method or 'full'}-seed{seed}",
        "suite": {"name": "text", "train_size": settings.train_size,
                  "eval_size": settings.eval_size},
        "model": model, "sampler": "all", "balancer": "ew", "baselines": "none",
        "baselines_dir": str(settings.out / "baselines"),
        "train": {"max_steps": settings.steps, "batch_size": settings.batch_size,
                  "eval_batch_size": 64, "seed": seed, "eval_every": settings.steps,
                  "checkpoint_every": settings.steps, "keep_checkpoints": 1,
                  "lr": settings.adapter_lr if method else settings.full_lr,
                  "progress": False, "callbacks": []},
    }


def _load(data: Mapping[str, Any]) -> Any:
    from polytask.config import load_config

    return load_config(dict(data))


def _quiet() -> Any:
    from rich.console import Console

    return Console(quiet=True)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MIB


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable parameters, parameters of the pretrained backbone). The backbone count
    leaves out the adapter's own parameters, which `attach` put inside its module tree."""
    adapter = getattr(model, "adapter", None)
    added = {id(p) for p in adapter.adapter_parameters()} if adapter is not None else set()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    backbone = sum(p.numel() for p in model.backbone.parameters() if id(p) not in added)
    return trainable, backbone


def _rows(inputs: Mapping[str, Any], count: int) -> dict[str, Any]:
    """The first `count` rows of every input tensor, at the full padded length (so mixed
    and single-task batches hold the same number of tokens)."""
    return {k: v[:count] for k, v in inputs.items()}


def routing_ratio(model: Any, data: Any, batch: int, reps: int) -> dict[str, float]:
    """Median time of a forward + backward pass over `batch` rows drawn from every task
    (routed per sample in one pass) and over `batch` rows of the first task alone, and
    their ratio. The two kinds of pass alternate so that both see the same load."""
    import torch

    names = [t.name for t in data.tasks]
    train = {t: data.splits[data.task_source[t]]["train"].inputs for t in names}
    share = max(1, batch // len(names))
    mixed = {t: _rows(train[t], share) for t in names}
    single = {names[0]: _rows(train[names[0]], share * len(names))}
    model.train()

    def one_pass(inputs: Mapping[str, Any]) -> float:
        model.zero_grad(set_to_none=True)
        tick = time.perf_counter()
        outputs = model(dict(inputs)).outputs
        torch.stack([o.float().square().mean() for o in outputs.values()]).sum().backward()
        return time.perf_counter() - tick

    one_pass(mixed), one_pass(single)  # warm-up
    times: dict[str, list[float]] = {"mixed": [], "single": []}
    for _ in range(reps):
        times["single"].append(one_pass(single))
        times["mixed"].append(one_pass(mixed))
    single_s, mixed_s = statistics.median(times["single"]), statistics.median(times["mixed"])
    return {"single_s": single_s, "mixed_s": mixed_s, "ratio": mixed_s / single_s}


def _baseline_values(settings: Settings, seed: int) -> dict[str, float | None]:
    """Train (or reuse) the single-task LoRA baselines of `seed`; their test values."""
    from polytask.train.trainer import train_baselines

    return train_baselines(_load(base_config(settings, seed, "lora")), _quiet())


def _train_method(settings: Settings, job: Job) -> dict[str, Any]:
    """Train `job.method` (None: full fine-tuning); Δm% is computed from the records, against
    the same seed's LoRA baselines (`delta_m_of`)."""
    from polytask.train.trainer import Trainer

    run_dir = settings.out / "runs" / job.name
    trainer = Trainer(_load(base_config(settings, job.seed, job.method)), run_dir,
                      resume=run_dir.exists(), console=_quiet())
    results = trainer.fit()
    trainable, backbone = parameter_counts(trainer.model)
    record: dict[str, Any] = {
        "tasks": {t: r["value"] for t, r in results["tasks"].items()},
        "step_time_s": results["median_step_time_s"], "trainable": trainable,
        "backbone": backbone}
    if job.routing:
        record["routing"] = routing_ratio(trainer.model, trainer.data, settings.routing_batch,
                                          settings.routing_reps)
    for heavy in ("checkpoints", "best"):  # full-model copies; the record is what is kept
        shutil.rmtree(run_dir / heavy, ignore_errors=True)
    return record


def _child(settings: Settings, job: Job, pipe: Any) -> None:
    """The forked side: run the job, send its record (or its error) back."""
    try:
        if job.kind == "baselines":
            record: dict[str, Any] = {"baselines": _baseline_values(settings, job.seed)}
        else:
            record = _train_method(settings, job)
        record["peak_rss_mib"] = _peak_rss_mib()
    except Exception as error:  # a failing method is a row of the table, not a crash
        record = {"error": f"{type(error).__name__}: {error}",
                  "traceback": traceback.format_exc()}
    pipe.send(record)
    pipe.close()


def run_job(settings: Settings, job: Job) -> dict[str, Any]:
    """The job's record: reused from OUT/jobs when it finished before, else computed in a
    forked child and written there (a failed job is recorded only in memory, so it reruns)."""
    path = settings.out / "jobs" / f"{job.name}.json"
    if path.exists():
        return json.loads(path.read_text())
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(settings, job, send))
    process.start()
    send.close()
    try:
        record = receive.recv()
    except EOFError:
        record = {"error": "the child process died (out of memory?)"}
    process.join()
    if "error" not in record:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1))
    return record


def job_order(methods: Sequence[str], seeds: int) -> list[Job]:
    """Seed 0 of everything first (baselines, full fine-tuning, each adapter with its
    routing measurement), then the other seeds."""
    jobs = []
    for seed in range(seeds):
        jobs.append(Job(f"baselines-seed{seed}", "baselines", seed))
        jobs.append(Job(f"full-seed{seed}", "method", seed, None))
        jobs += [Job(f"{m}-seed{seed}", "method", seed, m, routing=seed == 0) for m in methods]
    return jobs


def preload(settings: Settings) -> None:
    """Import what every child needs (transformers' model class of the backbone, PEFT, the
    trainer) and build the suite's cached tables once, in this process, so that each forked
    child starts with them. Nothing here runs torch operations: the children fork from a
    process whose OpenMP runtime has not started."""
    import peft  # noqa: F401
    import scipy.stats  # noqa: F401  (the metrics import it, and sklearn, on first use)
    import sklearn.metrics  # noqa: F401
    from transformers import AutoConfig, AutoTokenizer
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    import polytask.train.trainer  # noqa: F401
    from polytask.models.backbones import resolve_model_path
    from polytask.suites import load_suite

    path = resolve_model_path(settings.backbone)
    config = AutoConfig.from_pretrained(path)
    MODEL_MAPPING[type(config)]  # imports the modeling module
    get_checkpoint_conversion_mapping(config.model_type)  # builds (and caches) its regexes
    AutoTokenizer.from_pretrained(path)
    load_suite("text", train_size=settings.train_size, eval_size=settings.eval_size)


def run_all(settings: Settings, jobs: Sequence[Job], time_limit: float | None,
            say: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Every job's record, in order; jobs not started within `time_limit` seconds are
    recorded as not run."""
    started = time.perf_counter()
    records: dict[str, dict[str, Any]] = {}
    for index, job in enumerate(jobs, 1):
        if time_limit is not None and time.perf_counter() - started > time_limit:
            records[job.name] = {"error": "not run (--time-limit)"}
            continue
        tick = time.perf_counter()
        records[job.name] = run_job(settings, job)
        outcome = records[job.name].get("error", "ok")
        say(f"[{index}/{len(jobs)}] {job.name}: {outcome.splitlines()[0]} "
            f"({time.perf_counter() - tick:.1f}s)")
    return records


# -- the tables ----------------------------------------------------------------------------
def delta_m_of(record: Mapping[str, Any], baselines: Mapping[str, Any]) -> float | None:
    """Δm% (%) of a method's record against its seed's LoRA baselines; None where a baseline
    is missing or zero (tiny --quick splits)."""
    from polytask.evaluate.delta import delta_m

    try:
        return delta_m({t: (v, baselines.get(t), True) for t, v in record["tasks"].items()})
    except ValueError:
        return None


def _mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def _method_rows(records: Mapping[str, Mapping[str, Any]], method: str,
                 seeds: int) -> list[dict[str, Any]]:
    """The finished seeds of `method`, each with its Δm% against its seed's baselines."""
    prefix = "full" if method == FULL else method
    rows = []
    for seed in range(seeds):
        record = records.get(f"{prefix}-seed{seed}", {"error": ""})
        if "error" not in record:
            baselines = records.get(f"baselines-seed{seed}", {}).get("baselines", {})
            rows.append({**record, "delta_m": delta_m_of(record, baselines)})
    return rows


def results_table(records: Mapping[str, Mapping[str, Any]], methods: Sequence[str],
                  seeds: int) -> str:
    """One row per method (and full fine-tuning): mean ± std over the seeds that finished."""
    lora = [r["step_time_s"] for r in _method_rows(records, "lora", seeds)]
    lora_step = statistics.median(lora) if lora else None
    header = ["method", "trainable", "% backbone", "step / lora", "peak RSS MiB", *TASKS,
              "Δm%", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in [*methods, FULL]:
        rows = _method_rows(records, method, seeds)
        if not rows:
            prefix = "full" if method == FULL else method
            error = records.get(f"{prefix}-seed0", {}).get("error", "not run")
            lines.append(f"| {method} | {error.splitlines()[0][:90]} |" + " |" * 8)
            continue
        first = rows[0]
        step = statistics.median(r["step_time_s"] for r in rows)
        cells = [method, f"{first['trainable']:,}",
                 f"{100 * first['trainable'] / first['backbone']:.2f}",
                 f"{step / lora_step:.2f}x" if lora_step else "–",
                 f"{max(r['peak_rss_mib'] for r in rows):.0f}",
                 *[_mean_std([r["tasks"][t] for r in rows]) for t in TASKS],
                 _mean_std([r["delta_m"] for r in rows if r["delta_m"] is not None], digits=2),
                 str(len(rows))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def routing_table(records: Mapping[str, Mapping[str, Any]], methods: Sequence[str]) -> str:
    """Per adapter: forward + backward time of a mixed-task batch over a single-task one."""
    lines = ["| method | single-task batch ms | mixed-task batch ms | mixed / single |",
             "|---|---|---|---|"]
    for method in methods:
        routing = records.get(f"{method}-seed0", {}).get("routing")
        if routing is None:
            lines.append(f"| {method} | – | – | – |")
            continue
        lines.append(f"| {method} | {1e3 * routing['single_s']:.1f} | "
                     f"{1e3 * routing['mixed_s']:.1f} | {routing['ratio']:.2f}x |")
    return "\n".join(lines)


def baselines_line(records: Mapping[str, Mapping[str, Any]], seeds: int) -> str:
    values = {t: [r["baselines"][t] for s in range(seeds)
                  if "error" not in (r := records.get(f"baselines-seed{s}", {"error": ""}))
                  and r["baselines"].get(t) is not None] for t in TASKS}
    return "single-task LoRA baselines (test accuracy): " + ", ".join(
        f"{t} {_mean_std(v)}" for t, v in values.items())


# -- the command ---------------------------------------------------------------------------
def _adapter_names() -> list[str]:
    from polytask.adapters import names

    return list(names())


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 steps, 16 training rows per task, 1 seed")
    parser.add_argument("--methods", default=None,
                        help="comma-separated adapters (default: every registered one)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per method (3)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--backbone", default="minilm-l6",
                        help="a packaged alias or a local Hugging Face folder")
    parser.add_argument("--train-size", type=int, default=None, help="rows per task (160)")
    parser.add_argument("--eval-size", type=int, default=None,
                        help="validation and test rows per task (64)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (40)")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per task (4)")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="start no job after this many seconds (1800; none in --quick)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-adapters"))
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"seeds": 1 if quick else 3, "train_size": 16 if quick else 160,
                "eval_size": 8 if quick else 64, "steps": 2 if quick else 40,
                "batch_size": 4, "time_limit": None if quick else 1800.0}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    methods = (_adapter_names() if args.methods is None
               else [m.strip() for m in args.methods.split(",") if m.strip()])
    if "lora" not in methods:
        methods.insert(0, "lora")  # the reference of the step-time ratio
    settings = Settings(out=args.out, backbone=args.backbone, rank=args.rank,
                        train_size=args.train_size, eval_size=args.eval_size, steps=args.steps,
                        batch_size=args.batch_size, adapter_lr=1e-3, full_lr=5e-5,
                        routing_batch=3 * args.batch_size, routing_reps=2 if args.quick else 5)
    print(f"text suite: {args.train_size} train / {args.eval_size} validation / "
          f"{args.eval_size} test rows per task; {args.backbone}, max_length 64, rank "
          f"{args.rank}, {args.steps} steps of {args.batch_size} rows per task (sampler all), "
          f"{args.seeds} seed(s); jobs in {args.out}", flush=True)
    preload(settings)
    records = run_all(settings, job_order(methods, args.seeds), args.time_limit,
                      lambda line: print(line, flush=True))
    print()
    print(baselines_line(records, args.seeds))
    print()
    print(results_table(records, methods, args.seeds))
    print()
    print(f"per-sample routing: forward + backward over {settings.routing_batch} rows, from "
          "every task (mixed) or one task (single), median of "
          f"{settings.routing_reps} alternating passes")
    print(routing_table(records, methods))
    failed = {n: r["traceback"] for n, r in records.items() if "traceback" in r}
    for name, trace in failed.items():
        print(f"\n{name} failed:\n{trace}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
