"""Fixtures of the merge regime, merged-run and export tests: a two-task table (heads of
2 and 3 outputs) on the MLP backbone, and one merge run over it shared by the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from rich.console import Console

from polytask.config import RunConfig, load_config
from polytask.merge.regime import MergeOutcome, run_merge

COLUMNS = ["a", "b", "c", "d"]


def toy_frame(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """`up`: the sign of a + b (2 classes); `level`: c high, middle or low (3 classes)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    return pd.DataFrame({
        "a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "d": x[:, 3],
        "up": np.where(x[:, 0] + x[:, 1] > 0, "yes", "no"),
        "level": np.select([x[:, 2] > 0.5, x[:, 2] < -0.5], ["high", "low"], "middle")})


def toy_config_dict(csv: Path, baselines: Path) -> dict[str, Any]:
    return {
        "name": "toy", "data": {"path": str(csv)},
        "tasks": [{"name": "up", "kind": "classification", "input": COLUMNS, "label": "up"},
                  {"name": "level", "kind": "classification", "input": COLUMNS,
                   "label": "level"}],
        "model": {"backbone": {"type": "mlp", "hidden": [32, 32]}},
        "train": {"max_steps": 60, "batch_size": 32, "eval_every": 30, "progress": False,
                  "callbacks": [], "lr": 0.005},
        "baselines_dir": str(baselines)}


@pytest.fixture(scope="session")
def toy_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("merge-toy")
    csv = folder / "toy.csv"
    toy_frame().to_csv(csv, index=False)
    return {"csv": csv, "baselines": folder / "baselines", "folder": folder}


@pytest.fixture(scope="session")
def toy_yaml(toy_files: dict[str, Path]) -> Path:
    """The toy config as a YAML file (for the CLI)."""
    path = toy_files["folder"] / "toy.yaml"
    path.write_text(yaml.safe_dump(toy_config_dict(toy_files["csv"], toy_files["baselines"])))
    return path


@pytest.fixture(scope="session")
def toy_config(toy_files: dict[str, Path]) -> RunConfig:
    return load_config(toy_config_dict(toy_files["csv"], toy_files["baselines"]))


@pytest.fixture(scope="session")
def toy_merge(toy_config: RunConfig, toy_files: dict[str, Path]) -> tuple[MergeOutcome, Path]:
    """One merge run (task_arithmetic, ties, surgery; mix and frozen rows) over the toy."""
    out = toy_files["folder"] / "merge"
    outcome = run_merge(toy_config, ["task_arithmetic", "ties", "surgery"], out,
                        console=Console(quiet=True), options={"surgery": {"steps": 30}})
    return outcome, out
