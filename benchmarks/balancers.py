"""Step time of every balancer relative to equal weighting, on one model and one set of batches.

    python benchmarks/balancers.py --tasks 10 --hidden 1024 [--steps 30] [--clock cpu] [--json FILE]

Model: trunk Linear(64,H)-ReLU-Linear(H,H)-ReLU, T linear heads, MSE, batch 256, SGD. A step
is zero_grad, forward, `balancer.backward`, `optimizer.step` and `balancer.after_step` (which
re-evaluates the batch only for methods that ask, such as FAMO). Steps of `ew` and of the
method alternate, so both see the same machine load; the ratio is of the median step times
over `--steps` timed steps (after 3 warm-up steps). `--clock cpu` times with the thread's CPU
clock instead of the wall clock: on a machine shared with other jobs it leaves out the time
the process waits for a core (1 thread, so CPU time is the uncontended wall time).

Peers are timed the same way, with the same model, batches and optimizer, when installed:
torchjd (`mtl_backward` + `jac_to_grad`) and LibMTL (its weighting classes hosted on the model,
as its Trainer does: `weighting.backward(losses, **weight_args)`). LibMTL's package
`__init__` imports torchvision (for its ResNets); when that is missing, its `weighting`
subpackage (torch and numpy only) is loaded on its own. Its IMTL is the hybrid IMTL (IMTL-G
on IMTL-L-scaled losses), listed against our `imtl_g`. Prints a table; never asserts.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib
import importlib.util
import json
import statistics
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import numpy as np
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
#: LibMTL weighting class and `weight_args` computing the same thing as ours
LIBMTL: dict[str, tuple[str, dict[str, Any]]] = {
    "ew": ("EW", {}),
    "uw": ("UW", {}),
    "dwa": ("DWA", {"T": 2.0}),
    "gls": ("GLS", {}),
    "rlw": ("RLW", {"dist": "Normal"}),
    "gradnorm": ("GradNorm", {"alpha": 1.5}),
    "mgda": ("MGDA", {"mgda_gn": "none"}),
    "pcgrad": ("PCGrad", {}),
    "gradvac": ("GradVac", {"beta": 0.01}),
    "graddrop": ("GradDrop", {"leak": 0.0}),
    "cagrad": ("CAGrad", {"calpha": 0.4, "rescale": 1}),
    "imtl_g": ("IMTL", {}),
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


@functools.cache
def libmtl_weighting() -> types.ModuleType | None:
    """`LibMTL.weighting`, loaded without LibMTL's package `__init__` if that fails."""
    spec = importlib.util.find_spec("LibMTL")
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        return importlib.import_module("LibMTL.weighting")
    except ImportError:
        for key in [k for k in sys.modules if k == "LibMTL" or k.startswith("LibMTL.")]:
            del sys.modules[key]
        package = types.ModuleType("LibMTL")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["LibMTL"] = package
        return importlib.import_module("LibMTL.weighting")


def libmtl_step(model: Model, name: str) -> Step | None:
    if name not in LIBMTL:
        return None
    weighting = libmtl_weighting()
    if weighting is None:
        return None
    cls_name, weight_args = LIBMTL[name]
    tasks = len(model.heads)

    class Host(getattr(weighting, cls_name)):  # type: ignore[misc]
        """What LibMTL's Trainer mixes into the model for a weighting to run."""

        def __init__(self) -> None:
            super().__init__()
            self.task_num = tasks
            self.task_name = [f"t{i}" for i in range(tasks)]
            self.device = torch.device("cpu")
            self.rep_grad = False
            self.epoch = 1  # past the first epoch, where GradNorm and DWA do their real work
            self.train_loss_buffer = np.ones((tasks, 2))
            self.init_param()

        def get_share_params(self) -> Any:
            return model.trunk.parameters()

        def zero_grad_share_params(self) -> None:
            # zero in place: LibMTL then writes the update into the existing .grad
            model.trunk.zero_grad(set_to_none=False)

    host = Host()
    optimizer = torch.optim.SGD([*model.parameters(), *host.parameters()], lr=1e-3)

    def step(x: Tensor, y: Tensor) -> None:
        optimizer.zero_grad(set_to_none=False)
        losses, _ = model(x, y)
        host.backward(torch.stack(list(losses.values())), **weight_args)
        optimizer.step()

    return step


def ratio(
    step: Step, baseline: Step, batches: list[tuple[Tensor, Tensor]],
    clock: Callable[[], float] = time.perf_counter, warmup: int = 3,
) -> float:
    """Median step time of `step` over that of `baseline`, run alternately."""
    times: dict[int, list[float]] = {0: [], 1: []}
    for i, (x, y) in enumerate(batches):
        for k, fn in enumerate((baseline, step)):
            start = clock()
            fn(x, y)
            if i >= warmup:
                times[k].append(clock() - start)
    return statistics.median(times[1]) / statistics.median(times[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per method")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: time.perf_counter; cpu: the thread's CPU time")
    parser.add_argument("--methods", nargs="*", help="subset of rows (default: all)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    torch.set_num_threads(1)
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    torch.manual_seed(0)
    template = Model(args.tasks, args.hidden)
    gen = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(BATCH, INPUTS, generator=gen), torch.randn(BATCH, args.tasks, generator=gen))
        for _ in range(args.steps + 3)
    ]
    rows = {n: (n, {}) for n in balance.names()} | VARIANTS
    if args.methods:
        rows = {n: rows[n] for n in args.methods}
    results: dict[str, Any] = {}
    print(f"T={args.tasks} H={args.hidden} batch={BATCH}: median step time / ew step time "
          f"({args.steps} steps, {args.clock} clock, 1 thread)")
    print(f"{'method':<26}{'polytask':>10}{'torchjd':>10}{'libmtl':>10}")
    for row, (name, kwargs) in rows.items():
        baseline = polytask_step(copy.deepcopy(template), balance.get("ew"))
        if name == "fixed":
            kwargs = {"weights": {f"t{i}": 1.0 for i in range(args.tasks)}}
        ours = ratio(polytask_step(copy.deepcopy(template), balance.get(name, **kwargs)),
                     baseline, batches, clock)
        peers: dict[str, float | None] = {"torchjd": None, "libmtl": None}
        failed: dict[str, str] = {}
        if not kwargs or row == name:
            for peer, make in (("torchjd", torchjd_step), ("libmtl", libmtl_step)):
                fn = make(copy.deepcopy(template), name)
                try:
                    peers[peer] = None if fn is None else ratio(fn, baseline, batches, clock)
                except Exception as error:  # a peer's bug is reported, not fatal
                    failed[peer] = f"{type(error).__name__}: {error}"
        results[row] = {"ratio_to_ew": ours, "peers": peers}
        if failed:
            results[row]["peer_errors"] = failed
        shown = ["fails" if k in failed else "-" if v is None else f"{v:.2f}"
                 for k, v in peers.items()]
        print(f"{row:<26}{ours:>10.2f}{shown[0]:>10}{shown[1]:>10}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tasks": args.tasks, "hidden": args.hidden, "steps": args.steps,
                       "clock": args.clock, "methods": results}, f, indent=2)


if __name__ == "__main__":
    main()
