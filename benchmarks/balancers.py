"""Step time of every balancer relative to equal weighting, on one model and one set of batches.

    python benchmarks/balancers.py --tasks 10 --hidden 1024 [--steps 30] [--clock cpu] [--json F]
    python benchmarks/balancers.py --sweep [--budget 1.5] [--time-limit 480] [--methods ...]
    python benchmarks/balancers.py --model cnn --tasks 2 [--methods ...]

Model: trunk Linear(64,H)-ReLU-Linear(H,H)-ReLU, T linear heads, MSE, batch 256, SGD. With
`--model cnn`, the trunk is the MultiMNIST LeNet (`polytask.models.vision.LeNetFeatures`:
Conv(1,10,5)-MaxPool-ReLU-Conv(10,20,5)-MaxPool-ReLU-Linear(320,50)-ReLU) on 1 x 28 x 28
inputs (`--hidden` is not used): its convolutions take the unfolded (im2col) Gramian path. A step
is zero_grad, forward, `balance.backward`, `optimizer.step` and `balancer.after_step` (which
re-evaluates the batch only for methods that ask, such as FAMO). Steps of `ew` and of the
method alternate, so both see the same machine load. Each cell shows two ratios to `ew`:
the median step time, then (in brackets) the mean step time. They differ when a method does
its work periodically (`update_every`, Nash-MTL's `update_weights_every`): the median shows
the cheap steps, the mean the amortised cost. `--clock cpu` times with the thread's CPU clock
instead of the wall clock: on a machine shared with other jobs it leaves out the time the
process waits for a core (1 thread, so CPU time is the uncontended wall time).

Peers are timed the same way, with the same model, batches and optimizer:
- torchjd (`mtl_backward` + `jac_to_grad`), with `optimize_gramian_computation=True` for every
  aggregator that weights the Jacobian's rows from its Gramian (UPGrad, DualProj, MGDA, ...),
  so it never concatenates the Jacobian when it needs only the Gramian. UPGrad and DualProj
  need `torchjd[quadprog-projector]`, Nash-MTL `torchjd[nash-mtl]` (`pip install -e .[bench]`).
- LibMTL (its weighting classes hosted on the model, as its Trainer does:
  `weighting.backward(losses, **kwargs)`), driving the API of its current source: GradVac
  reads `GradVac_beta` and `GradVac_group_type`, UPGrad `UPGrad_norm_eps`/`UPGrad_reg_eps`,
  Nash-MTL `update_weights_every`/`optim_niter`/`max_norm`. GradDrop, and the
  `mgda+representation` row, run with representation gradients (`rep_grad=True`): the model
  hands each head a detached copy of the trunk output (`rep_tasks`), as LibMTL's
  architectures do. The PyPI release (1.1.5) predates UPGrad and Nash-MTL and names GradVac's
  beta `beta`; both keys are passed, so either version runs. LibMTL's package `__init__`
  imports torchvision (for its ResNets); when that is missing, its `weighting` subpackage
  (torch and numpy only) is loaded on its own. Its IMTL is the hybrid IMTL (IMTL-G on
  IMTL-L-scaled losses), listed against our `imtl_g`.

A peer cell says `not installed`, `n/a` (the peer has no such method), `not in LibMTL X`
(that release lacks it), `fails: Error` (full messages are listed under the table and in
`--json`), or `skipped: ...` (a T x P Jacobian over `--max-jacobian-gb`).

`--sweep` times T in {2, 5, 10, 20, 40} x H in {256, 1024, 4096} in one run, cheapest first,
and prints each row as it finishes. Repeats adapt: each cell runs until it has `--steps`
timed steps or has used `--budget` seconds (at least 2 timed steps); cells left when
`--time-limit` seconds have passed print `not run`. Prints tables; never asserts.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib
import importlib.metadata
import importlib.util
import itertools
import json
import statistics
import sys
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import polytask.balance as balance
from polytask.models.vision import LeNetFeatures

BATCH = 256
INPUTS = 64
#: `--model cnn`: image size and LeNet feature width
IMAGE = (1, 28, 28)
LENET_WIDTH = 50
SWEEP_TASKS = (2, 5, 10, 20, 40)
SWEEP_HIDDEN = (256, 1024, 4096)
#: rows of `--sweep` unless `--methods` says otherwise: the methods with peers
SWEEP_METHODS = ("ew", "mgda", "pcgrad", "cagrad", "imtl_g", "upgrad", "dualproj", "nash_mtl",
                 "nash_mtl+update_every=5", "gradvac", "graddrop")
#: fewest timed steps of a cell, whatever `--budget` says
MIN_STEPS = 2
#: extra rows: a wrapper applied to a method (name -> (method, get() keywords))
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "mgda+representation": ("mgda", {"representation": True}),
    "upgrad+representation": ("upgrad", {"representation": True}),
    "nash_mtl+representation": ("nash_mtl", {"representation": True}),
    "nash_mtl+update_every=5": ("nash_mtl", {"update_every": 5}),
    "pcgrad+sparse=0.1": ("pcgrad", {"sparse": 0.1}),
    "famo+lagged": ("famo", {"lagged": True}),
}
#: torchjd aggregators computing the same thing as a row (factory given T)
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
    "nash_mtl+update_every=5": lambda a, t: a.NashMTL(n_tasks=t, update_weights_every=5),
    "graddrop": lambda a, t: a.GradDrop(),
    "gradvac": lambda a, t: a.GradVac(),
}


@dataclass(frozen=True)
class LibMTLRow:
    """A LibMTL weighting class, the `kwargs` of its `backward`, and whether it works on
    representation gradients (`rep_grad`)."""

    weighting: str
    kwargs: dict[str, Any]
    rep_grad: bool = False


#: LibMTL weightings computing the same thing as a row
LIBMTL: dict[str, LibMTLRow] = {
    "ew": LibMTLRow("EW", {}),
    "uw": LibMTLRow("UW", {}),
    "dwa": LibMTLRow("DWA", {"T": 2.0}),
    "gls": LibMTLRow("GLS", {}),
    "rlw": LibMTLRow("RLW", {"dist": "Normal"}),
    "gradnorm": LibMTLRow("GradNorm", {"alpha": 1.5}),
    "mgda": LibMTLRow("MGDA", {"mgda_gn": "none"}),
    "mgda+representation": LibMTLRow("MGDA", {"mgda_gn": "none"}, rep_grad=True),
    "pcgrad": LibMTLRow("PCGrad", {}),
    # current source: GradVac_beta + GradVac_group_type (0: whole model); 1.1.5: beta
    "gradvac": LibMTLRow("GradVac", {"GradVac_beta": 0.01, "GradVac_group_type": 0,
                                     "beta": 0.01}),
    "graddrop": LibMTLRow("GradDrop", {"leak": 0.0}, rep_grad=True),
    "cagrad": LibMTLRow("CAGrad", {"calpha": 0.4, "rescale": 1}),
    "imtl_g": LibMTLRow("IMTL", {}),
    "upgrad": LibMTLRow("UPGrad", {"UPGrad_norm_eps": 1e-4, "UPGrad_reg_eps": 1e-4}),
    "nash_mtl": LibMTLRow("Nash_MTL", {"update_weights_every": 1, "optim_niter": 20,
                                       "max_norm": 1.0}),
    "nash_mtl+update_every=5": LibMTLRow("Nash_MTL", {"update_weights_every": 5,
                                                      "optim_niter": 20, "max_norm": 1.0}),
}


class NotRun(Exception):
    """Why a cell has no timing; its message is what the cell prints."""


class Model(nn.Module):
    def __init__(self, tasks: int, hidden: int, kind: str = "mlp") -> None:
        super().__init__()
        if kind == "cnn":
            self.trunk: nn.Module = LeNetFeatures(IMAGE[0], IMAGE[1:], LENET_WIDTH)
            hidden = LENET_WIDTH
        else:
            self.trunk = nn.Sequential(
                nn.Linear(INPUTS, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
            )
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(tasks))

    def head_losses(self, features: Sequence[Tensor], y: Tensor) -> dict[str, Tensor]:
        """Each task's loss from its own copy of the trunk output (`features[i]`)."""
        return {
            f"t{i}": nn.functional.mse_loss(head(features[i]).squeeze(-1), y[:, i])
            for i, head in enumerate(self.heads)
        }

    def forward(self, x: Tensor, y: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        features = self.trunk(x)
        return self.head_losses([features] * len(self.heads), y), features


Step = Callable[[Tensor, Tensor], None]


@dataclass(frozen=True)
class Timing:
    """Step time of a method over that of `ew`: ratio of medians and ratio of means."""

    median: float
    mean: float
    steps: int

    def __str__(self) -> str:
        return f"{self.median:.2f} ({self.mean:.2f})"


Cell = Timing | str


def polytask_step(model: Model, balancer: balance.Balancer) -> Step:
    balancer.setup([f"t{i}" for i in range(len(model.heads))])
    optimizer = torch.optim.SGD([*model.parameters(), *balancer.parameters()], lr=1e-3)
    shared = list(model.trunk.parameters())
    heads = list(model.heads.parameters())

    def step(x: Tensor, y: Tensor) -> None:
        optimizer.zero_grad()
        balancer.set_closure(lambda: model(x, y)[0])
        losses, features = model(x, y)
        balance.backward(losses, shared, balancer, features, task_params=heads)
        optimizer.step()
        balancer.after_step(lambda: model(x, y)[0])

    return step


def polytask_balancer(row: str, tasks: int) -> balance.Balancer:
    name, kwargs = VARIANTS.get(row, (row, {}))
    if name == "fixed":
        kwargs = {"weights": {f"t{i}": 1.0 for i in range(tasks)}}
    return balance.get(name, **kwargs)


def torchjd_step(model: Model, row: str) -> Step:
    if row not in TORCHJD:
        raise NotRun("n/a")
    if importlib.util.find_spec("torchjd") is None:
        raise NotRun("not installed")
    import torchjd.aggregation as aggregation
    from torchjd.autojac import jac_to_grad, mtl_backward

    try:
        aggregator = TORCHJD[row](aggregation, len(model.heads))
    except ImportError as error:  # an optional solver of torchjd's extras
        raise NotRun(f"not installed: {error.name}") from error
    # Gramian-based aggregators can skip concatenating the Jacobian (torchjd >= 0.18)
    gramian_based = isinstance(aggregator, aggregation.GramianWeightedAggregator)
    options = {"optimize_gramian_computation": True} if gramian_based else {}
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    shared = list(model.trunk.parameters())

    def step(x: Tensor, y: Tensor) -> None:
        optimizer.zero_grad()
        losses, features = model(x, y)
        mtl_backward(list(losses.values()), features, shared_params=shared)
        jac_to_grad(shared, aggregator, **options)
        optimizer.step()

    return step


@functools.cache
def libmtl_weighting() -> types.ModuleType:
    """`LibMTL.weighting`, loaded without LibMTL's package `__init__` if that fails."""
    spec = importlib.util.find_spec("LibMTL")
    if spec is None or not spec.submodule_search_locations:
        raise NotRun("not installed")
    try:
        return importlib.import_module("LibMTL.weighting")
    except ImportError:
        for key in [k for k in sys.modules if k == "LibMTL" or k.startswith("LibMTL.")]:
            del sys.modules[key]
        package = types.ModuleType("LibMTL")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["LibMTL"] = package
        return importlib.import_module("LibMTL.weighting")


def libmtl_version() -> str:
    """The installed LibMTL's version, "(source)" for a checkout on the path."""
    try:
        return importlib.metadata.version("LibMTL")
    except importlib.metadata.PackageNotFoundError:
        return "(source)" if "LibMTL" in sys.modules else "not installed"


def libmtl_step(model: Model, row: str) -> Step:
    if row not in LIBMTL:
        raise NotRun("n/a")
    spec = LIBMTL[row]
    base = getattr(libmtl_weighting(), spec.weighting, None)
    if base is None:
        raise NotRun(f"not in LibMTL {libmtl_version()}")
    tasks = len(model.heads)
    names = [f"t{i}" for i in range(tasks)]

    class Host(base):  # type: ignore[misc, valid-type]
        """What LibMTL's Trainer mixes into the model for a weighting to run."""

        def __init__(self) -> None:
            super().__init__()
            self.task_num = tasks
            self.task_name = names
            self.device = torch.device("cpu")
            self.rep_grad = spec.rep_grad
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

    def losses_of(x: Tensor, y: Tensor) -> dict[str, Tensor]:
        if not spec.rep_grad:
            return model(x, y)[0]
        # LibMTL's `_prepare_rep`: each head reads its own detached copy of the trunk output
        host.rep = model.trunk(x)
        host.rep_tasks = {t: host.rep.detach().clone().requires_grad_(True) for t in names}
        return model.head_losses([host.rep_tasks[t] for t in names], y)

    def step(x: Tensor, y: Tensor) -> None:
        optimizer.zero_grad(set_to_none=False)
        losses = losses_of(x, y)
        host.backward(torch.stack(list(losses.values())), **spec.kwargs)
        optimizer.step()

    return step


def measure(
    step: Step, baseline: Step, batches: Sequence[tuple[Tensor, Tensor]],
    clock: Callable[[], float],
    warmup: int, steps: int, budget: float | None,
) -> Timing:
    """Run `baseline` and `step` alternately on the same batches, `warmup` pairs untimed, then
    until `steps` timed pairs or, past MIN_STEPS, `budget` seconds of wall time."""
    times: tuple[list[float], list[float]] = ([], [])
    started = time.perf_counter()
    for i in itertools.count():
        x, y = batches[i % len(batches)]
        for k, fn in enumerate((baseline, step)):
            start = clock()
            fn(x, y)
            if i >= warmup:
                times[k].append(clock() - start)
        timed = len(times[0])
        over_budget = budget is not None and time.perf_counter() - started > budget
        if timed >= steps or (timed >= MIN_STEPS and over_budget):
            break
    base, ours = times
    return Timing(statistics.median(ours) / statistics.median(base),
                  statistics.mean(ours) / statistics.mean(base), len(ours))


@dataclass
class Setup:
    """One T x H configuration: a template model, its batches, and how to time a cell."""

    tasks: int
    hidden: int
    batches: list[tuple[Tensor, Tensor]]
    template: Model
    clock: Callable[[], float]
    warmup: int
    steps: int
    budget: float | None
    max_jacobian_gb: float

    @classmethod
    def build(cls, tasks: int, hidden: int, args: argparse.Namespace) -> Setup:
        torch.manual_seed(0)
        template = Model(tasks, hidden, args.model)
        gen = torch.Generator().manual_seed(1)
        shape = IMAGE if args.model == "cnn" else (INPUTS,)
        batches = [(torch.randn(BATCH, *shape, generator=gen),
                    torch.randn(BATCH, tasks, generator=gen))
                   for _ in range(min(args.steps, 50) + args.warmup)]
        clock = time.perf_counter if args.clock == "wall" else time.thread_time
        return cls(tasks, hidden, batches, template, clock, args.warmup, args.steps,
                   args.budget, args.max_jacobian_gb)

    def jacobian_gb(self) -> float:
        """Size of the T x P float32 Jacobian of the trunk, which the peers materialise."""
        params = sum(p.numel() for p in self.template.trunk.parameters())
        return self.tasks * params * 4 / 2**30

    def cell(self, make: Callable[[Model], Step], errors: dict[str, str], key: str) -> Cell:
        """Time one implementation of a row against a fresh `ew` on the same batches."""
        if self.jacobian_gb() > self.max_jacobian_gb:
            return f"skipped: {self.jacobian_gb():.1f} GB"
        try:
            step = make(copy.deepcopy(self.template))
            baseline = polytask_step(copy.deepcopy(self.template), balance.get("ew"))
            return measure(step, baseline, self.batches, self.clock, self.warmup, self.steps,
                           self.budget)
        except NotRun as reason:
            return str(reason)
        except Exception as error:  # a bug, ours or a peer's, is reported, not fatal
            errors[key] = f"{type(error).__name__}: {error}"
            return f"fails: {type(error).__name__}"

    def row(self, row: str, errors: dict[str, str]) -> dict[str, Cell]:
        """The polytask, torchjd and LibMTL cells of one row."""
        where = f"T={self.tasks} H={self.hidden} {row}"
        return {
            "polytask": self.cell(lambda m: polytask_step(m, polytask_balancer(row, self.tasks)),
                                  errors, f"{where} polytask"),
            "torchjd": self.cell(lambda m: torchjd_step(m, row), errors, f"{where} torchjd"),
            "libmtl": self.cell(lambda m: libmtl_step(m, row), errors, f"{where} libmtl"),
        }


IMPLEMENTATIONS = ("polytask", "torchjd", "libmtl")
WIDTH = 22


def as_json(cell: Cell) -> dict[str, Any] | str:
    if isinstance(cell, Timing):
        return {"median": cell.median, "mean": cell.mean, "steps": cell.steps}
    return cell


def print_errors(errors: dict[str, str]) -> None:
    for where, message in errors.items():
        print(f"  {where} fails: {message}")


def legend(args: argparse.Namespace) -> str:
    budget = "" if args.budget is None else f", at most {args.budget:g} s per cell"
    return (f"batch={BATCH}, {args.clock} clock, 1 thread, {args.warmup} warm-up + up to "
            f"{args.steps} timed steps{budget}. Cells: step time / ew step time, median "
            "(mean).")


def run_table(args: argparse.Namespace, rows: list[str]) -> dict[str, Any]:
    setup = Setup.build(args.tasks, args.hidden, args)
    errors: dict[str, str] = {}
    results: dict[str, Any] = {}
    model = "LeNet (MultiMNIST CNN)" if args.model == "cnn" else f"MLP H={args.hidden}"
    print(f"T={args.tasks} {model}: {legend(args)}")
    print(f"{'method':<26}" + "".join(f"{k:>{WIDTH}}" for k in IMPLEMENTATIONS))
    for row in rows:
        cells = setup.row(row, errors)
        results[row] = {k: as_json(v) for k, v in cells.items()}
        print(f"{row:<26}" + "".join(f"{cells[k]!s:>{WIDTH}}" for k in IMPLEMENTATIONS),
              flush=True)
    print_errors(errors)
    return {"model": args.model, "tasks": args.tasks, "hidden": args.hidden, "rows": results,
            "errors": errors}


def run_sweep(args: argparse.Namespace, rows: list[str]) -> dict[str, Any]:
    """Every T x H of the sweep, cheapest first, each row printed as it finishes."""
    started = time.perf_counter()
    errors: dict[str, str] = {}
    results: list[dict[str, Any]] = []
    print(f"sweep T x H: {legend(args)} Time limit {args.time_limit:g} s.")
    print(f"{'T':>3}{'H':>6}  {'method':<24}" + "".join(f"{k:>{WIDTH}}" for k in IMPLEMENTATIONS))
    configs = sorted(itertools.product(SWEEP_TASKS, SWEEP_HIDDEN), key=lambda c: c[0] * c[1] ** 2)
    for tasks, hidden in configs:
        setup = Setup.build(tasks, hidden, args)
        for row in rows:
            if time.perf_counter() - started > args.time_limit:
                cells: dict[str, Cell] = dict.fromkeys(IMPLEMENTATIONS, "not run")
            else:
                cells = setup.row(row, errors)
            results.append({"tasks": tasks, "hidden": hidden, "method": row,
                            **{k: as_json(v) for k, v in cells.items()}})
            print(f"{tasks:>3}{hidden:>6}  {row:<24}"
                  + "".join(f"{cells[k]!s:>{WIDTH}}" for k in IMPLEMENTATIONS), flush=True)
    print_errors(errors)
    return {"sweep": results, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--model", choices=["mlp", "cnn"], default="mlp",
                        help="mlp: the MLP trunk of width --hidden; cnn: the MultiMNIST LeNet")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per cell (at most)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per cell")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds per cell, after which it stops at 2+ timed steps "
                             "(default: none; 1.5 with --sweep)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: time.perf_counter; cpu: the thread's CPU time")
    parser.add_argument("--methods", nargs="*", help="subset of rows (default: all)")
    parser.add_argument("--sweep", action="store_true",
                        help="T in {2,5,10,20,40} x H in {256,1024,4096}; default rows: "
                             + ", ".join(SWEEP_METHODS))
    parser.add_argument("--time-limit", type=float, default=480.0,
                        help="--sweep: seconds after which the remaining cells print 'not run'")
    parser.add_argument("--max-jacobian-gb", type=float, default=2.0,
                        help="skip cells whose T x P float32 Jacobian would exceed this")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.sweep and args.budget is None:
        args.budget = 1.5
    if args.sweep and args.model != "mlp":
        parser.error("--sweep varies the MLP's width; run --model cnn without --sweep")
    torch.set_num_threads(1)
    known = [*balance.names(), *VARIANTS]
    default = list(SWEEP_METHODS) if args.sweep else known
    rows = args.methods or default
    unknown = sorted(set(rows) - set(known))
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {known}")
    results = run_sweep(args, rows) if args.sweep else run_table(args, rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"clock": args.clock, "steps": args.steps, "budget": args.budget,
                       "libmtl": libmtl_version(), **results}, f, indent=2)


if __name__ == "__main__":
    main()
