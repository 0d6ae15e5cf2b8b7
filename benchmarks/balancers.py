"""Step time of every balancer relative to equal weighting, on one model and one set of batches.

    python benchmarks/balancers.py --tasks 10 --hidden 1024 [--json FILE]

Model: trunk Linear(64,H)-ReLU-Linear(H,H)-ReLU, T linear heads, MSE, batch 256, SGD. A step
is zero_grad, forward, `balancer.backward`, `optimizer.step` and `balancer.after_step` (which
re-evaluates the batch only for methods that ask, such as FAMO). Steps of `ew` and of the
method alternate, so both see the same machine load; the ratio is of the median step times.
Peers (torchjd, LibMTL) are timed the same way when installed. Prints a table; never asserts.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import polytask.balance as balance

BATCH = 256
INPUTS = 64
#: extra rows: a wrapper applied to a method (name -> (method, get() keywords))
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "mgda+representation": ("mgda", {"representation": True}),
    "upgrad+representation": ("upgrad", {"representation": True}),
    "nash_mtl+representation": ("nash_mtl", {"representation": True}),
    "nash_mtl+update_every=5": ("nash_mtl", {"update_every": 5}),
    "pcgrad+sparse=0.1": ("pcgrad", {"sparse": 0.1}),
}
#: torchjd aggregators computing the same thing as ours (factory given T)
TORCHJD: dict[str, Callable[[Any, int], Any]] = {
    "upgrad": lambda a, t: a.UPGrad(),
    "dualproj": lambda a, t: a.DualProj(),
    "mgda": lambda a, t: a.MGDA(),
    "pcgrad": lambda a, t: a.PCGrad(),
    "imtl_g": lambda a, t: a.IMTLG(),
    "aligned_mtl": lambda a, t: a.AlignedMTL(),
    "config": lambda a, t: a.ConFIG(),
    "cagrad": lambda a, t: a.CAGrad(c=0.4),
    "nash_mtl": lambda a, t: a.NashMTL(n_tasks=t),
    "graddrop": lambda a, t: a.GradDrop(),
    "gradvac": lambda a, t: a.GradVac(),
}


class Model(nn.Module):
    def __init__(self, tasks: int, hidden: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(INPUTS, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(tasks))

    def forward(self, x: Tensor, y: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        features = self.trunk(x)
        losses = {
            f"t{i}": nn.functional.mse_loss(head(features).squeeze(-1), y[:, i])
            for i, head in enumerate(self.heads)
        }
        return losses, features


Step = Callable[[Tensor, Tensor], None]


def polytask_step(model: Model, balancer: balance.Balancer) -> Step:
    balancer.setup([f"t{i}" for i in range(len(model.heads))])
    optimizer = torch.optim.SGD([*model.parameters(), *balancer.parameters()], lr=1e-3)
    shared = list(model.trunk.parameters())
    heads = list(model.heads.parameters())

    def step(x: Tensor, y: Tensor) -> None:
        optimizer.zero_grad()
        if hasattr(balancer, "set_closure"):
            balancer.set_closure(lambda: model(x, y)[0])
        losses, features = model(x, y)
        balancer.backward(losses, shared, features, heads)
        optimizer.step()
        balancer.after_step(lambda: model(x, y)[0])

    return step


def torchjd_step(model: Model, name: str) -> Step | None:
    if name not in TORCHJD or importlib.util.find_spec("torchjd") is None:
        return None
    import torchjd.aggregation as aggregation
    from torchjd.autojac import jac_to_grad, mtl_backward

    try:
        aggregator = TORCHJD[name](aggregation, len(model.heads))
    except ImportError:
        return None
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    shared = list(model.trunk.parameters())

    def step(x: Tensor, y: Tensor) -> None:
        optimizer.zero_grad()
        losses, features = model(x, y)
        mtl_backward(list(losses.values()), features, shared_params=shared)
        jac_to_grad(shared, aggregator)
        optimizer.step()

    return step


def ratio(step: Step, baseline: Step, batches: list[tuple[Tensor, Tensor]]) -> float:
    """Median step time of `step` over that of `baseline`, run alternately (2 warm-up steps)."""
    times: dict[int, list[float]] = {0: [], 1: []}
    for i, (x, y) in enumerate(batches):
        for k, fn in enumerate((baseline, step)):
            start = time.perf_counter()
            fn(x, y)
            if i >= 2:
                times[k].append(time.perf_counter() - start)
    return statistics.median(times[1]) / statistics.median(times[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method")
    parser.add_argument("--methods", nargs="*", help="subset of rows (default: all)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    torch.manual_seed(0)
    template = Model(args.tasks, args.hidden)
    gen = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(BATCH, INPUTS, generator=gen), torch.randn(BATCH, args.tasks, generator=gen))
        for _ in range(args.steps + 2)
    ]
    rows = {n: (n, {}) for n in balance.names()} | VARIANTS
    if args.methods:
        rows = {n: rows[n] for n in args.methods}
    results: dict[str, Any] = {}
    print(f"T={args.tasks} H={args.hidden} batch={BATCH}: median step time / ew step time")
    print(f"{'method':<26}{'polytask':>10}{'torchjd':>10}{'libmtl':>10}")
    for row, (name, kwargs) in rows.items():
        baseline = polytask_step(copy.deepcopy(template), balance.get("ew"))
        if name == "fixed":
            kwargs = {"weights": {f"t{i}": 1.0 for i in range(args.tasks)}}
        ours = ratio(polytask_step(copy.deepcopy(template), balance.get(name, **kwargs)),
                     baseline, batches)
        peer = None if kwargs and row != name else torchjd_step(copy.deepcopy(template), name)
        theirs = None if peer is None else ratio(peer, baseline, batches)
        results[row] = {"ratio_to_ew": ours, "peers": {"torchjd": theirs, "libmtl": None}}
        shown = "-" if theirs is None else f"{theirs:.2f}"
        print(f"{row:<26}{ours:>10.2f}{shown:>10}{'-':>10}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tasks": args.tasks, "hidden": args.hidden, "methods": results}, f, indent=2)


if __name__ == "__main__":
    main()
