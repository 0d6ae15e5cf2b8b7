"""torchrun with 2 gloo processes on CPU: every rank takes the same step, equal to one
process on the combined batch, for a loss weighting, PCGrad and a Gramian method."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tabular_config

WORKER = Path(__file__).with_name("ddp_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], env_extra: dict[str, str] | None = None) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           **(env_extra or {})}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def assert_ranks_match_one_process(ddp: Path, one: Path) -> dict[str, torch.Tensor]:
    """Both ranks' final parameters (saved by ddp_worker.py) are equal, and equal to one
    process's on the combined batch; returns rank 0's."""
    rank0 = load_file(str(ddp / "rank0.safetensors"))
    rank1 = load_file(str(ddp / "rank1.safetensors"))
    single = load_file(str(one / "rank0.safetensors"))
    for name, tensor in rank0.items():
        assert torch.equal(tensor, rank1[name]), f"ranks diverged on {name}"
        assert torch.allclose(tensor, single[name], atol=1e-5, rtol=1e-4), name
    return rank0


@pytest.mark.parametrize("balancer", ["ew", "uw", "pcgrad", "mgda"])
def test_two_processes_match_one_process_on_the_combined_batch(
        tmp_path: Path, tabular_file: Path, balancer: str) -> None:
    # SGD: Adam divides by the gradient scale, so float noise on a near-zero gradient
    # would become a full-size step and hide real divergence.
    base = tabular_config(tabular_file, max_steps=8, eval_every=4, batch_size=8,
                          optimizer="sgd", lr=0.05)
    base["balancer"] = balancer
    # Every label present: with masked labels a rank's mean loss weighs its own labelled rows
    # (as in PyTorch DDP), which differs from the combined batch's mean when counts differ.
    frame = pd.read_csv(tabular_file)
    frame["up"] = frame["up"].fillna("no")
    frame.to_csv(tmp_path / "full.csv", index=False)
    base["data"] = {"path": str(tmp_path / "full.csv")}
    base["only"] = ["up", "size"]
    combined = json.loads(json.dumps(base))
    combined["train"]["batch_size"] = 16
    (tmp_path / "ddp.json").write_text(json.dumps(base))
    (tmp_path / "one.json").write_text(json.dumps(combined))

    _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
          "--nproc-per-node", "2", str(WORKER), str(tmp_path / "ddp.json"),
          str(tmp_path / "ddp")])
    _run([sys.executable, str(WORKER), str(tmp_path / "one.json"), str(tmp_path / "one")])

    assert_ranks_match_one_process(tmp_path / "ddp", tmp_path / "one")
    # Only the first process writes the run directory.
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    reference = json.loads((tmp_path / "one" / "results.json").read_text())
    for task, entry in results["tasks"].items():
        assert entry["value"] == pytest.approx(reference["tasks"][task]["value"], abs=1e-6)
