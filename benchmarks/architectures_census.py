"""Δm% of every sharing architecture on the census suite, over several seeds.

For each architecture and seed: train jointly (balancer ew, sampler all) with the settings of
examples/census.yaml, against single-task baselines of the same seed (cached). Prints a
table of Δm% mean ± std and parameter counts.

    python benchmarks/architectures_census.py [--seeds 3] [--steps 400] [--out DIR] [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from rich.console import Console

from polytask import Trainer, load_config
from polytask.models.sharing import ARCHITECTURES
from polytask.train.trainer import train_baselines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path("runs/architectures-census"))
    parser.add_argument("--architectures", default=",".join(ARCHITECTURES.names()))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    quiet = Console(stderr=True, quiet=True)
    rows = {}
    for name in args.architectures.split(","):
        deltas, params = [], None
        for seed in range(args.seeds):
            config = load_config("examples/census.yaml", [
                f"model.architecture={name}", f"train.seed={seed}",
                f"train.max_steps={args.steps}", "train.progress=false",
                f"baselines_dir={args.out / 'baselines'}"])
            baselines = train_baselines(config, quiet)
            run = args.out / f"{name}-seed{seed}"
            if (run / "results.json").exists():
                results = json.loads((run / "results.json").read_text())
            else:
                trainer = Trainer(config, run, console=quiet, baselines=baselines)
                results = trainer.fit()
                params = sum(p.numel() for p in trainer.model.architecture.parameters())
            deltas.append(results["delta_m"])
        mean = statistics.mean(deltas)
        std = statistics.stdev(deltas) if len(deltas) > 1 else 0.0
        rows[name] = {"delta_m_mean": mean, "delta_m_std": std, "deltas": deltas,
                      "architecture_params": params}
        print(f"{name:14s} Δm% {mean:+6.2f} ± {std:4.2f}   architecture params {params}",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
