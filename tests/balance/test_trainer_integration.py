"""Every registered balancer (and each wrapper) trains through the real trainer on `yeast`.

14 tasks, an MLP backbone with one hidden layer of 64, 120 steps of batch 64, one thread: no
NaN anywhere in the log, the summed training loss falls from the first logged records to
the last, and gradient methods leave the gradient cosines that the trainer logs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

import polytask
import polytask.balance as balance
from polytask.balance.base import LossWeighting
from polytask.suites.yeast import TASKS

STEPS = 120
LOG_EVERY = 5
#: records averaged at each end of the run (the per-batch loss is noisy)
WINDOW = 4
WRAPPED: dict[str, dict[str, Any]] = {
    "mgda+representation": {"name": "mgda", "representation": True},
    "nash_mtl+update_every": {"name": "nash_mtl", "update_every": 3},
    "pcgrad+sparse": {"name": "pcgrad", "sparse": 0.3},
    "upgrad+sam": {"name": "upgrad", "sam_rho": 0.01},
}
NO_GRADIENTS = {
    n for n in balance.names()
    if issubclass(balance.BALANCERS.get(n), LossWeighting) or n == "gradnorm"
}


def method(name: str) -> str | dict[str, Any]:
    if name in WRAPPED:
        return WRAPPED[name]
    if name == "fixed":
        return {"name": "fixed", "weights": {t: 1.0 + (i % 3) for i, t in enumerate(TASKS)}}
    return name


@pytest.mark.parametrize("name", [*balance.names(), *WRAPPED])
def test_balancer_trains_on_yeast(name: str, tmp_path: Path) -> None:
    config = polytask.load_config({
        "suite": {"name": "yeast"},
        "balancer": method(name),
        "model": {"backbone": {"type": "mlp", "hidden": [64]}},
        "train": {"max_steps": STEPS, "batch_size": 64, "eval_every": STEPS,
                  "log_every": LOG_EVERY, "progress": False, "threads": 1, "callbacks": []},
    })
    polytask.Trainer(config, tmp_path / "run").fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    train = [r for r in records if r.get("split") == "train"]
    assert len(train) == STEPS // LOG_EVERY
    for record in records:
        bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
        assert not bad, f"step {record.get('step')}: non-finite {bad}"
    totals = []
    for record in train:
        losses = {k: v for k, v in record.items() if k.startswith("loss/")}
        assert len(losses) == len(TASKS)
        totals.append(sum(losses.values()))
    first = sum(totals[:WINDOW]) / WINDOW
    last = sum(totals[-WINDOW:]) / WINDOW
    assert last < 0.9 * first, f"summed training loss {first:.3f} -> {last:.3f}"
    cosines = [k for k in train[-1] if k.startswith("cosine/")]
    base = WRAPPED.get(name, {}).get("name", name)
    if base in NO_GRADIENTS:
        assert not cosines
    else:
        assert len(cosines) == len(TASKS) * (len(TASKS) - 1) // 2
