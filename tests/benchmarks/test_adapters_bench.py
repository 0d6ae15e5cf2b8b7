"""`benchmarks/adapters.py --quick` runs end to end (baselines, full fine-tuning, one adapter,
the routing measurement) and prints its tables; on a tiny BERT so that it takes seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "adapters.py"


def test_quick_mode_prints_every_table(tiny_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--methods", "lora", "--backbone",
         str(tiny_bert), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    table = [line for line in lines if line.startswith("| ")]
    results = {line.split("|")[1].strip(): line for line in table if line.count("|") == 11}
    routing = [line for line in table if line.count("|") == 5]
    assert "1.00x" in results["lora"]  # lora is the step-time reference
    assert "full fine-tuning" in results
    assert routing[-1].startswith("| lora |") and routing[-1].endswith("x |")
    assert "failed" not in done.stdout
    assert any(line.startswith("single-task LoRA baselines") for line in lines)
    record = json.loads((out / "jobs" / "lora-seed0.json").read_text())
    full = json.loads((out / "jobs" / "full-seed0.json").read_text())
    assert record["backbone"] == full["backbone"]  # the adapter's parameters are not counted
    assert record["trainable"] < record["backbone"] and record["peak_rss_mib"] > 0
    assert record["routing"]["ratio"] > 0
    assert set(record["tasks"]) == {"rotten_tomatoes", "bbc_news", "amazon_food"}
