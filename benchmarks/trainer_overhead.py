"""How much does polytask's training loop cost over a hand-written PyTorch loop?

Same model (MLP trunk + per-task heads), same rows, same AdamW; polytask's `ew` step
(sampler, batch stream, balancer, scheduler, logging) against a plain loop that indexes the
same rows out of the same tensors (what a hand-written loop over in-memory data does).
Prints the median step time of each and their ratio (goal: <= 1.05). Times are this
thread's CPU time (torch runs on 1 thread here), so other processes on a shared machine do
not distort them.

    python benchmarks/trainer_overhead.py [--steps 300] [--tasks 3] [--hidden 512] [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from polytask import Trainer, load_config


def synthetic(tasks: int, rows: int, features: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, features))
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(features)])
    for t in range(tasks):
        w = rng.normal(size=features)
        frame[f"y{t}"] = np.where(x @ w > 0, "a", "b")
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    features = 64
    frame = synthetic(args.tasks, 20_000, features)
    names = [f"t{i}" for i in range(args.tasks)]
    inputs = [f"x{i}" for i in range(features)]
    config = load_config({
        "data": frame,
        "tasks": [{"name": n, "kind": "classification", "input": inputs, "label": f"y{i}"}
                  for i, n in enumerate(names)],
        "model": {"backbone": {"type": "mlp", "hidden": [args.hidden, args.hidden]}},
        "train": {"max_steps": args.steps, "batch_size": args.batch, "eval_every": args.steps,
                  "log_every": 10, "progress": False, "checkpoint_every": 10**9,
                  "grad_clip": None, "scheduler": "constant", "warmup_ratio": 0.0},
    })
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, Path(tmp) / "run")
        polytask_times: list[float] = []
        original = trainer._train_step

        def timed() -> dict[str, float]:
            start = time.thread_time()
            out = original()
            polytask_times.append(time.thread_time() - start)
            return out

        trainer._train_step = timed  # type: ignore[method-assign]
        trainer.fit()

        # The same model, optimizer and rows, in a hand-written loop.
        model = trainer.model
        split = trainer.data.splits["shared"]["train"]
        generator = torch.Generator().manual_seed(0)
        rows = [torch.randint(split.size, (args.batch,), generator=generator)
                for _ in range(args.steps)]
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        plain_times: list[float] = []
        for index in rows:
            start = time.thread_time()
            inputs = {k: v[index] for k, v in split.inputs.items()}
            outputs = model({t: inputs for t in names})
            loss = sum(F.cross_entropy(outputs[t], split.labels[t][index])
                       for t in names) / len(names)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            plain_times.append(time.thread_time() - start)
    skip = min(20, args.steps // 5)
    ours = statistics.median(polytask_times[skip:])
    plain = statistics.median(plain_times[skip:])
    report = {"tasks": args.tasks, "hidden": args.hidden, "batch": args.batch,
              "polytask_step_ms": ours * 1e3, "plain_step_ms": plain * 1e3,
              "ratio": ours / plain}
    print(f"polytask ew step  {ours * 1e3:8.3f} ms")
    print(f"plain torch step  {plain * 1e3:8.3f} ms")
    print(f"ratio             {ours / plain:8.3f}  (goal <= 1.05)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
