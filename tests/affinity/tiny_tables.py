"""Tiny in-memory tables and configs for the affinity tests (seconds each, no files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polytask import Trainer, load_config
from polytask.config import RunConfig

INPUTS = [f"x{i}" for i in range(6)]


def two_block_table(tasks: int = 4, rows: int = 512, noise: float = 0.0,
                    seed: int = 0) -> pd.DataFrame:
    """Regression targets t0..t{T-1}: the first half share tanh(x·u), the second half
    tanh(x·v), with u ⟂ v (the planted blocks)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(INPUTS)))
    basis = np.linalg.qr(rng.normal(size=(len(INPUTS), len(INPUTS))))[0]
    frame = pd.DataFrame({name: x[:, i] for i, name in enumerate(INPUTS)})
    for t in range(tasks):
        direction = basis[:, 0] if t < tasks // 2 else basis[:, 1]
        frame[f"t{t}"] = 2 * np.tanh(x @ direction) + noise * rng.normal(size=rows)
    return frame


def two_block_config(tasks: int = 4, steps: int = 30, **settings: Any) -> RunConfig:
    """A hard-sharing MLP config over `two_block_table`; `settings` go to the top level."""
    return load_config({
        "data": two_block_table(tasks),
        "tasks": [{"name": f"t{t}", "kind": "regression", "input": INPUTS, "label": f"t{t}"}
                  for t in range(tasks)],
        "model": {"backbone": {"type": "mlp", "hidden": [32]}},
        "train": {"max_steps": steps, "batch_size": 64, "lr": 0.01, "progress": False,
                  "callbacks": []},
        "baselines": "none",
        **settings,
    })


def trained(config: RunConfig, run_dir: Path, **options: Any) -> Trainer:
    """A Trainer fitted on `config` (a fixed model for the by-hand checks)."""
    trainer = Trainer(config, run_dir, **options)
    trainer.fit()
    return trainer
