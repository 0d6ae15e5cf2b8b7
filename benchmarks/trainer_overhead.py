"""How much does polytask's training loop cost over a hand-written PyTorch loop?

Same model (MLP trunk + per-task heads), same data, same AdamW; polytask's `ew` loop
(`Trainer.fit`: sampler, batch stream, balancer, scheduler, logging) against a plain loop
that indexes random rows out of the same encoded tensors (what a hand-written loop over
in-memory data does) on its own copy of the same model.

The two loops are interleaved so that both see the same machine load: the Trainer runs
`--round` steps, then (inside a hook on its step, outside the Trainer's clock) the plain loop
runs `--round` steps, and so on. A Trainer round is timed from the start of one step to the
start of the step `--round` later, so it covers all the loop does between steps (logging,
progress, evaluation checks) except the final evaluation. Each round gives one ratio; the
median over the rounds (after `--skip` warm-up rounds) is the result, printed with its
quartiles and extremes so a noisy run shows. Goal: <= 1.03.

`--profile` runs cProfile over the same rounds (the Trainer and the plain loop profiled
separately, on the same clock) and prints, per step, where each spends its time: tottime
(in the function itself) and cumtime (with its callees) of polytask's own functions, and
the top tottime entries overall. cProfile slows Python-heavy code more than torch kernels, so the
timings of a profiled run overstate the overhead; use it to see where, not how much.

    python benchmarks/trainer_overhead.py [--rounds 40] [--round 10] [--tasks 3] [--hidden 512]
                                          [--clock cpu] [--profile] [--json F]
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import json
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from polytask import Trainer, load_config
from polytask.train.callbacks import StepResult

FEATURES = 64
ROWS = 20_000


def synthetic(tasks: int, rows: int, features: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, features))
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(features)])
    for t in range(tasks):
        w = rng.normal(size=features)
        frame[f"y{t}"] = np.where(x @ w > 0, "a", "b")
    return frame


def build_trainer(args: argparse.Namespace, run_dir: Path) -> Trainer:
    names = [f"t{i}" for i in range(args.tasks)]
    inputs = [f"x{i}" for i in range(FEATURES)]
    steps = (args.rounds + args.skip) * args.round + 1
    config = load_config({
        "data": synthetic(args.tasks, ROWS, FEATURES),
        "tasks": [{"name": n, "kind": "classification", "input": inputs, "label": f"y{i}"}
                  for i, n in enumerate(names)],
        "model": {"backbone": {"type": "mlp", "hidden": [args.hidden, args.hidden]}},
        "train": {"max_steps": steps, "batch_size": args.batch, "eval_every": steps,
                  "log_every": args.log_every, "progress": False, "checkpoint_every": 10**9,
                  "grad_clip": None, "scheduler": "constant", "warmup_ratio": 0.0},
    })
    return Trainer(config, run_dir)


def plain_loop(trainer: Trainer, batch: int) -> Callable[[], None]:
    """One step of a hand-written loop on a copy of the Trainer's model and data."""
    model = copy.deepcopy(trainer.model)
    names = list(trainer.task_names)
    split = trainer.data.splits["shared"]["train"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=trainer.config.train.lr)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        index = torch.randint(split.size, (batch,), generator=generator)
        inputs = {k: v[index] for k, v in split.inputs.items()}
        outputs = model({t: inputs for t in names})
        loss = sum(F.cross_entropy(outputs[t], split.labels[t][index]) for t in names)
        optimizer.zero_grad(set_to_none=True)
        (loss / len(names)).backward()
        optimizer.step()

    return step


class Interleaver:
    """Wraps `Trainer._train_step`: every `size` Trainer steps, times the Trainer's round,
    then runs and times `size` plain steps, so the two loops alternate."""

    def __init__(self, trainer: Trainer, size: int, batch: int, clock: Callable[[], float],
                 profile: bool) -> None:
        self.trainer, self.size, self.batch, self.clock = trainer, size, batch, clock
        self.last = trainer.config.train.max_steps - 1  # its step ends the last round
        self.original = trainer._train_step
        self.plain: Callable[[], None] | None = None
        self.steps = 0
        self.round_start = 0.0
        self.rounds: dict[str, list[float]] = {"polytask": [], "plain": []}
        self.profiles = ({k: cProfile.Profile(timer=clock) for k in self.rounds}
                         if profile else None)

    def __call__(self) -> StepResult:
        now = self.clock()
        if self.plain is None:  # the Trainer has built its model: copy it
            self.plain = plain_loop(self.trainer, self.batch)
        elif self.steps % self.size == 0:
            self.toggle("polytask", enable=False)
            self.rounds["polytask"].append(now - self.round_start)
            self.toggle("plain", enable=True)
            start = self.clock()
            for _ in range(self.size):
                self.plain()
            self.rounds["plain"].append(self.clock() - start)
            self.toggle("plain", enable=False)
        if self.steps % self.size == 0 and self.steps < self.last:
            self.toggle("polytask", enable=True)
            self.round_start = self.clock()
        self.steps += 1
        return self.original()

    def toggle(self, loop: str, enable: bool) -> None:
        if self.profiles is None:
            return
        if enable:
            self.profiles[loop].enable()
        else:
            self.profiles[loop].disable()


def quantiles(values: list[float]) -> dict[str, float]:
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"min": min(values), "q1": q1, "median": median, "q3": q3, "max": max(values)}


def print_profile(profile: cProfile.Profile, label: str, steps: int, top: int) -> None:
    """The functions where a loop spends its time, in microseconds per step."""
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    entries = [(f"{Path(file).name}:{line}({func})", calls / steps, tt / steps * 1e6,
                ct / steps * 1e6, file) for (file, line, func), (_, calls, tt, ct, _) in
               stats.items()]
    header = f"{'calls/step':>10}{'tottime us':>12}{'cumtime us':>12}  function"

    def show(title: str, rows: list[tuple[str, float, float, float, str]]) -> None:
        print(f"\n{label}: {title}, per step ({steps} steps)\n{header}")
        for name, calls, tt, ct, _ in rows[:top]:
            print(f"{calls:>10.1f}{tt:>12.1f}{ct:>12.1f}  {name}")

    ours = [e for e in entries if "/polytask/" in e[4]]
    if ours:
        show("polytask functions by cumtime", sorted(ours, key=lambda e: -e[3]))
    show("all functions by tottime", sorted(entries, key=lambda e: -e[2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="timed rounds of each loop")
    parser.add_argument("--round", type=int, default=10, help="steps per round")
    parser.add_argument("--skip", type=int, default=3, help="untimed warm-up rounds")
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--log-every", type=int, default=10, help="train.log_every")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: time.perf_counter; cpu: the process's CPU time")
    parser.add_argument("--profile", action="store_true", help="cProfile both loops")
    parser.add_argument("--top", type=int, default=25, help="--profile: rows per list")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(args, Path(tmp) / "run")
        hook = Interleaver(trainer, args.round, args.batch, clock, args.profile)
        trainer._train_step = hook  # type: ignore[method-assign]
        trainer.fit()
    ours = hook.rounds["polytask"][args.skip:]
    plain = hook.rounds["plain"][args.skip:]
    ratios = quantiles([a / b for a, b in zip(ours, plain, strict=True)])
    per_step = {k: statistics.median(v) / args.round * 1e3 for k, v in
                (("polytask", ours), ("plain", plain))}
    print(f"T={args.tasks} H={args.hidden} batch={args.batch}, {len(ours)} interleaved rounds of "
          f"{args.round} steps, {args.clock} clock, 1 thread")
    print(f"polytask step   {per_step['polytask']:8.3f} ms (median round / {args.round})")
    print(f"plain step      {per_step['plain']:8.3f} ms")
    print(f"ratio           {ratios['median']:8.3f}  median of per-round ratios (goal <= 1.03)")
    print(f"spread          q1 {ratios['q1']:.3f}  q3 {ratios['q3']:.3f}  "
          f"min {ratios['min']:.3f}  max {ratios['max']:.3f}")
    if hook.profiles is not None:
        profiled = (len(ours) + args.skip) * args.round
        for loop, profile in hook.profiles.items():
            print_profile(profile, loop, profiled, args.top)
    if args.json:
        args.json.write_text(json.dumps({
            "tasks": args.tasks, "hidden": args.hidden, "batch": args.batch,
            "rounds": len(ours), "round_steps": args.round, "clock": args.clock,
            "polytask_step_ms": per_step["polytask"], "plain_step_ms": per_step["plain"],
            "ratio": ratios, "profiled": args.profile}, indent=1))


if __name__ == "__main__":
    main()
