"""The balancing engine: all the gradient work, once, for every method and option.

    result = balance.backward(losses, shared_params, method, features=None, options)

`method` is a pure method (`polytask.balance.base`) or a `Balancer` from `balance.get`
(a method with its options and their state). The engine

* gives each task-specific parameter its own task's gradient (aggregators: the unweighted
  `∇L_t`, so that a task weighted 0 still trains its head, as in MGDA-UB; weightings: the
  gradient of the weighted sum, as in the papers). The task-specific parameters are found
  in the autograd graph when not given;
* computes the task gradients of the shared parameters once, in factored form
  (`TaskGradients`), starting from the shared representation: the deepest node of the
  graph that every path from the losses to the shared parameters crosses, found in the
  graph (`find_shared_graph`), so the heads are not traversed with T-row gradients; the
  analysis is remembered by the graph's structure (`analyse_graph`), so a training loop
  pays for it once;
* applies the options (`Options`): `representation`, `update_every`, `sparse`, `sam_rho`;
* *accumulates* the update into `.grad` (like `Tensor.backward`);
* returns a `BalanceResult`: the task weights applied and, when asked (`gramian=True`), the
  Gramian of the task gradients the method saw, for the caller to log.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, Node

from polytask.balance.base import (
    BALANCERS,
    GramianWeighting,
    JacobianAggregator,
    LossWeighting,
    Method,
)
from polytask.balance.gramian import (
    LinearLayer,
    TaskGradients,
    add_grad,
    find_linear_layers,
    linear_layer,
)
from polytask.balance.jacobian import cut_rows

Closure = Callable[[], Mapping[str, Tensor]]


@dataclass(frozen=True)
class Options:
    """How the engine applies a method (each is also a keyword of `balance.get` and of a
    config's balancer section: `balancer: {name: pcgrad, update_every: 3}`).

    * `representation`: the method sees the task gradients w.r.t. the shared
      representation instead of the shared parameters (Sener & Koltun 2018, MGDA-UB);
    * `update_every`: a Gramian method solves for its weights every k steps only and
      reuses them in between (Navon et al. 2022, §6.4);
    * `sparse`: only this fraction of the shared parameter entries is updated, those with
      the largest |gradient of the summed loss| at the first step (Zhang et al. 2024);
    * `sam_rho`: per-task sharpness-aware gradients of radius ρ (Phan et al. 2022).

    They compose where that makes sense (`representation` with `update_every`; `sparse`
    with `update_every` or `sam_rho`); `check` refuses the other pairs.
    """

    representation: bool = False
    update_every: int = 1
    sparse: float | None = None
    sam_rho: float | None = None

    def __post_init__(self) -> None:
        if self.update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {self.update_every}")
        if self.sparse is not None and not 0 < self.sparse <= 1:
            raise ValueError(f"sparse must be a fraction in (0, 1], got {self.sparse}")
        if self.sam_rho is not None and self.sam_rho <= 0:
            raise ValueError(f"sam_rho must be > 0, got {self.sam_rho}")

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> Options:
        """Options from `get` keywords, where None, False and 1 (for `update_every` and
        `sparse`) mean "off"."""
        return cls(
            representation=bool(values.get("representation")),
            update_every=1 if values.get("update_every") is None else int(values["update_every"]),
            sparse=None if values.get("sparse") in (None, 1, 1.0) else float(values["sparse"]),
            sam_rho=float(values["sam_rho"]) if values.get("sam_rho") else None,
        )

    @property
    def masked(self) -> bool:
        return self.sparse is not None

    def check(self, method: Method) -> None:
        """A clear error when `method` cannot run with these options."""
        name = type(method).__name__
        used = [f.name for f in fields(self) if getattr(self, f.name) != f.default]
        if used and isinstance(method, LossWeighting):
            raise ValueError(
                f"{', '.join(used)} need(s) a method over per-task gradients; {name} is a "
                "loss weighting (it never sees them): drop the option or pick an aggregator"
            )
        if self.representation and not method.supports_features:
            raise ValueError(
                f"representation=True: {name} does not support representation-level "
                "gradients (it keeps per-task state across batches)"
            )
        if self.update_every > 1 and not isinstance(method, GramianWeighting):
            raise ValueError(
                f"update_every needs a method whose update is a weighted sum of the task "
                f"gradients (a Gramian method); {name} is not"
            )
        pairs = [("representation", "sparse"), ("representation", "sam_rho"),
                 ("update_every", "sam_rho")]
        for first, second in pairs:
            if first in used and second in used:
                raise ValueError(
                    f"{first} and {second} do not compose: "
                    + _WHY[(first, second)] + "; drop one of them"
                )
        if used and isinstance(method, JacobianAggregator) and not method.supports_features:
            raise ValueError(f"{', '.join(used)}: {name} keeps per-task state across steps "
                             "and runs without engine options")


_WHY = {
    ("representation", "sparse"): "a mask over representation entries would change "
    "meaning with every batch",
    ("representation", "sam_rho"): "SAM perturbs the shared parameters, not the "
    "representation",
    ("update_every", "sam_rho"): "reused weights would skip the flat gradients SAM needs",
}
#: The `get` keywords (and config keys) that set engine options rather than the method's.
OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Options))


@dataclass
class EngineState:
    """What the options remember between steps (checkpointed with the method)."""

    step: int = 0
    #: weights of the last solved step, by task (update_every)
    cached: dict[str, float] | None = None
    #: the shared entries that sparse training updates
    mask: Tensor | None = None

    def reuse(self, names: Sequence[str], every: int) -> Tensor | None:
        """The cached weights when this step reuses them (update_every), else None."""
        if self.cached is None or self.step % every == 0 or set(self.cached) != set(names):
            return None
        return torch.tensor([self.cached[n] for n in names], dtype=torch.float64)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "cached": self.cached, "mask": self.mask}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = state.get("step", 0)
        self.cached = state.get("cached")
        self.mask = state.get("mask")


@dataclass
class BalanceResult:
    """What one balanced backward did: the task weights applied (empty for an aggregator
    that is no weighted sum) and, when asked, the Gramian of the task gradients the method
    saw (of the representation with `representation`; None for loss weightings)."""

    weights: dict[str, float] = field(default_factory=dict)
    gramian: Tensor | None = None


@dataclass
class SharedGraph:
    """What the engine reads from the autograd graph of the losses: the task-specific
    parameters reached, and the shared cut (None when there is none)."""

    task_params: list[Tensor]
    #: the deepest output every path from the losses to the shared parameters crosses
    cut: GradientEdge | None
    #: the shallowest such output: where the task heads branch off (the representation)
    representation: GradientEdge | None


def find_shared_graph(losses: Sequence[Tensor], shared: Sequence[Tensor]) -> SharedGraph:
    """Walk the graph of `losses` once: the leaves that are not `shared` (task-specific
    parameters) and the dominators of the shared parameters' leaves (Cooper, Harvey &
    Kennedy's algorithm; one pass, as the graph is acyclic)."""
    owned = {id(p) for p in shared}
    roots = [loss.grad_fn for loss in losses if loss.grad_fn is not None]
    order: list[Node] = []  # postorder
    seen: set[Node] = set(roots)
    nr_used: dict[Node, set[int]] = {}
    preds: dict[Node, list[Node]] = {}
    stack: list[tuple[Node, int]] = [(r, 0) for r in reversed(roots)]
    while stack:
        node, i = stack.pop()
        children = node.next_functions
        if i < len(children):
            stack.append((node, i + 1))
            child, nr = children[i]
            if child is None:
                continue
            nr_used.setdefault(child, set()).add(nr)
            preds.setdefault(child, []).append(node)
            if child not in seen:
                seen.add(child)
                stack.append((child, 0))
        else:
            order.append(node)
    rank = {node: i for i, node in enumerate(reversed(order))}  # topological: roots first
    task_params: list[Tensor] = []
    targets: list[Node] = []
    for node in order:
        variable = getattr(node, "variable", None)
        if variable is None:
            continue
        if id(variable) in owned:
            targets.append(node)
        elif variable.requires_grad:
            task_params.append(variable)
    if any(p.grad_fn is not None for p in shared) or not targets or len(roots) < len(losses):
        return SharedGraph(task_params[::-1], None, None)
    idom = _dominators(order, rank, preds, set(roots))
    chain = []
    node: Node | None = _common(targets, idom, rank)
    while node is not None:
        chain.append(node)
        node = idom.get(node)
    # a node whose users read one output only, and that is no parameter's leaf
    cuts = [n for n in chain if len(nr_used.get(n, {0})) == 1 and not hasattr(n, "variable")]
    if not cuts:
        return SharedGraph(task_params[::-1], None, None)

    def edge(n: Node) -> GradientEdge:
        return GradientEdge(n, next(iter(nr_used.get(n, {0}))))

    return SharedGraph(task_params[::-1], edge(cuts[0]), edge(cuts[-1]))


def _dominators(
    order: list[Node], rank: dict[Node, int], preds: dict[Node, list[Node]], roots: set[Node]
) -> dict[Node, Node | None]:
    """Immediate dominator of each node (None: only the virtual root above the losses)."""
    idom: dict[Node, Node | None] = {}
    for node in reversed(order):
        if node in roots:
            idom[node] = None
            continue
        result: Node | None = None
        first = True
        for pred in preds[node]:
            result = pred if first else _meet(result, pred, idom, rank)
            first = False
            if result is None:
                break
        idom[node] = result
    return idom


def _meet(a: Node | None, b: Node | None, idom: dict[Node, Node | None],
          rank: dict[Node, int]) -> Node | None:
    while a is not None and b is not None and a is not b:
        if rank[a] > rank[b]:
            a = idom[a]
        else:
            b = idom[b]
    return a if a is b else None


def _common(nodes: list[Node], idom: dict[Node, Node | None],
            rank: dict[Node, int]) -> Node | None:
    """The deepest node that dominates all of `nodes` (strictly, when there are several)."""
    result: Node | None = idom[nodes[0]] if len(nodes) == 1 else nodes[0]
    for node in nodes[1:]:
        result = _meet(result, node, idom, rank)
    if result is not None and result in nodes:
        result = idom[result]
    return result


#: A graph's structure: the positions of the roots and, per node (in the order
#: `_fingerprint` walks them), its type, its edges (position of the child, output number)
#: and, for a leaf, the id of its tensor.
Fingerprint = tuple[tuple[int, ...], tuple[tuple[type, tuple[int, ...], int], ...]]
#: how many graph structures `analyse_graph` remembers (a few models, or a few step shapes)
ANALYSES_KEPT = 8


@dataclass(frozen=True)
class _Analysis:
    """What `find_shared_graph` and `find_linear_layers` found in one graph, as positions in
    `_fingerprint`'s walk: valid for every graph with the same fingerprint, so the next
    step (a new graph of the same shape) maps it onto its own nodes instead of analysing."""

    #: positions of the task-specific parameters' leaf nodes
    task_params: tuple[int, ...]
    #: (position, output number) of the cut and of the representation
    cut: tuple[int, int] | None
    representation: tuple[int, int] | None
    #: linear layers below the cut: (position, index of the weight and of the bias (-1:
    #: none) in the shared parameters)
    layers: tuple[tuple[int, int, int], ...]

    @classmethod
    def of(cls, graph: SharedGraph, layers: Sequence[LinearLayer], nodes: list[Node],
           shared: Sequence[Tensor]) -> _Analysis:
        at = {node: i for i, node in enumerate(nodes)}
        leaf = {id(getattr(n, "variable", None)): i for i, n in enumerate(nodes)}
        param = {id(p): i for i, p in enumerate(shared)}

        def edge(e: GradientEdge | None) -> tuple[int, int] | None:
            return None if e is None else (at[e.node], e.output_nr)

        return cls(
            tuple(leaf[id(p)] for p in graph.task_params), edge(graph.cut),
            edge(graph.representation),
            tuple((at[layer.node], param[id(layer.weight)],
                   -1 if layer.bias is None else param[id(layer.bias)]) for layer in layers))

    def rebuild(self, nodes: list[Node], shared: Sequence[Tensor]
                ) -> tuple[SharedGraph, list[LinearLayer]] | None:
        """The analysis on a graph with the same fingerprint (None if a layer's saved
        input no longer qualifies: the caller then analyses afresh)."""

        def edge(e: tuple[int, int] | None) -> GradientEdge | None:
            return None if e is None else GradientEdge(nodes[e[0]], e[1])

        layers = []
        for at, weight, bias in self.layers:
            layer = linear_layer(nodes[at], shared[weight], None if bias < 0 else shared[bias])
            if layer is None:
                return None
            layers.append(layer)
        graph = SharedGraph([nodes[i].variable for i in self.task_params],  # type: ignore[attr-defined]
                            edge(self.cut), edge(self.representation))
        return graph, layers


_ANALYSES: OrderedDict[tuple[Fingerprint, tuple[int, ...]], _Analysis] = OrderedDict()


def _fingerprint(roots: list[Node]) -> tuple[Fingerprint, list[Node]]:
    """The structure of the graph below `roots` and its nodes, in breadth-first order."""
    at: dict[Node, int] = {}
    nodes: list[Node] = []
    for root in roots:
        if root not in at:
            at[root] = len(nodes)
            nodes.append(root)
    shape = []
    for node in nodes:  # grows while it is walked
        edges: list[int] = []
        for child, nr in node.next_functions:
            if child is None:
                edges.append(-1)
                continue
            i = at.get(child)
            if i is None:
                i = at[child] = len(nodes)
                nodes.append(child)
            edges += (i, nr)
        shape.append((type(node), tuple(edges), id(getattr(node, "variable", None))))
    return (tuple(at[r] for r in roots), tuple(shape)), nodes


def analyse_graph(losses: Sequence[Tensor], shared: Sequence[Tensor]
                  ) -> tuple[SharedGraph, list[LinearLayer] | None]:
    """`find_shared_graph`, and the linear layers below its cut (None without a cut),
    remembered by the graph's structure and the shared parameters' identities: a training
    loop builds a graph of the same structure every step, which is then only walked once
    (`_fingerprint`, a third of the analysis' cost) and the analysis mapped onto it."""
    roots = [loss.grad_fn for loss in losses]
    if any(r is None for r in roots) or any(p.grad_fn is not None for p in shared):
        graph = find_shared_graph(losses, shared)
        return graph, None
    shape, nodes = _fingerprint(roots)  # type: ignore[arg-type]
    key = (shape, tuple(id(p) for p in shared))
    known = _ANALYSES.get(key)
    found = None if known is None else known.rebuild(nodes, shared)
    if found is None:
        graph = find_shared_graph(losses, shared)
        layers = [] if graph.cut is None else find_linear_layers(graph.cut.node, shared)
        _ANALYSES[key] = _Analysis.of(graph, layers, nodes, shared)
        while len(_ANALYSES) > ANALYSES_KEPT:
            _ANALYSES.popitem(last=False)
        found = graph, layers
    _ANALYSES.move_to_end(key)
    graph, layers = found
    return graph, None if graph.cut is None else layers


def backward(
    losses: Mapping[str, Tensor],
    shared_params: Sequence[Tensor],
    method: Method | Balancer,
    features: Tensor | None = None,
    options: Options | None = None,
    *,
    task_params: Sequence[Tensor] | None = None,
    state: EngineState | None = None,
    closure: Closure | None = None,
    gramian: bool = False,
) -> BalanceResult:
    """Accumulate the balanced update of `losses` (task name -> scalar loss) into `.grad`.

    `method` is a pure method, or a `Balancer` (whose options, state and closure are then
    used). `features` is the shared representation for `representation=True`; it is found in
    the graph when not given. `task_params` lists the task-specific parameters (found in
    the graph when not given). `state` holds what `update_every` and `sparse` remember
    between steps; `closure()` re-evaluates the batch's losses with gradients (`sam_rho`).
    With `gramian=True` the result carries the Gramian of the task gradients.
    """
    if isinstance(method, Balancer):
        if options is None and state is None and closure is None:
            return method.run(losses, shared_params, features, task_params, gramian)
        options = method.options if options is None else options
        state = method.state if state is None else state
        closure = method.closure if closure is None else closure
        method = method.method
    return _balance(losses, shared_params, method, features, options, task_params, state,
                    closure, gramian)


def _balance(
    losses: Mapping[str, Tensor],
    shared_params: Sequence[Tensor],
    method: Method,
    features: Tensor | None,
    options: Options | None,
    task_params: Sequence[Tensor] | None,
    state: EngineState | None,
    closure: Closure | None,
    gramian: bool,
) -> BalanceResult:
    options = options or Options()
    options.check(method)
    if (options.update_every > 1 or options.masked) and state is None:
        raise ValueError("update_every and sparse remember state between steps: pass "
                         "state=EngineState() (balance.get keeps one for you)")
    names = list(losses)
    ordered = [losses[n] for n in names]
    vector = torch.stack([loss.reshape(()) for loss in ordered])
    params = [p for p in shared_params if p.requires_grad]
    if isinstance(method, LossWeighting):
        return _weighted_backward(method, names, vector, params)
    graph, layers = None, None
    if task_params is None or features is None or not options.representation:
        graph, layers = analyse_graph(ordered, params)
    heads = list(task_params) if task_params is not None else graph.task_params  # type: ignore[union-attr]
    run = _Run(names, ordered, vector, params, method, options, state, gramian, layers)
    # the deepest shared output found in the graph; the caller's features if none was found
    cut = features if graph is None or graph.cut is None else graph.cut
    if isinstance(cut, GradientEdge) and not options.representation and run.factors_needed():
        run.cut_grads = _cut_grads_and_heads(ordered, cut, heads)
    elif heads:
        torch.autograd.backward(vector.sum(), inputs=heads, retain_graph=True)
    if options.representation:
        return run.on_representation(_representation(features, graph))
    if isinstance(method, JacobianAggregator):
        return run.jacobian_method(cut, closure)
    return run.gramian_method(cut, closure)


def _cut_grads_and_heads(
    losses: Sequence[Tensor], cut: GradientEdge, heads: Sequence[Tensor]
) -> Tensor | None:
    """The T per-task gradients at `cut`, stacked (None when no loss reaches it), with the
    gradient of Σ_t L_t added into each task-specific parameter's `.grad` on the way: one
    plain backward per task, through its own head only (no separate pass for the heads)."""
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, [cut, *heads], retain_graph=True, allow_unused=True)
        rows.append(grads[0])
        for param, grad in zip(heads, grads[1:], strict=True):
            if grad is not None:
                add_grad(param, grad)  # a copy: autograd may hand one tensor to two inputs
    like = next((row for row in rows if row is not None), None)
    if like is None:
        return None
    return torch.stack([torch.zeros_like(like) if row is None else row for row in rows])


def _weighted_backward(
    method: LossWeighting, names: list[str], vector: Tensor, params: list[Tensor]
) -> BalanceResult:
    weights = method.loss_weights(vector, names)
    probe = method.gradient_probe(params)
    if probe:
        method.observe_gramian(TaskGradients(vector, probe).gramian(), vector)
    method.objective(vector, weights).backward()
    return BalanceResult(dict(zip(names, weights.detach().tolist(), strict=True)))


def _representation(
    features: Tensor | None, graph: SharedGraph | None
) -> Tensor | GradientEdge:
    if features is not None:
        return features
    if graph is None or graph.representation is None:
        raise ValueError(
            "representation=True needs the shared representation: no output that every "
            "path from the losses to the shared parameters crosses was found in the graph; "
            "pass features= (the tensor the task heads read)"
        )
    return graph.representation


@dataclass
class _Run:
    """One call of the engine on a gradient method (after the task-specific gradients)."""

    names: list[str]
    losses: list[Tensor]
    vector: Tensor
    params: list[Tensor]
    method: Method
    options: Options
    state: EngineState | None
    want_gramian: bool
    #: the linear layers below the cut, when the graph analysis found them
    layers: list[LinearLayer] | None = None
    #: the T per-task gradients at the cut, when the engine computed them with the heads'
    cut_grads: Tensor | None = None

    def task_gradients(self, cut: Tensor | GradientEdge | None) -> TaskGradients:
        return TaskGradients(self.losses, self.params, cut, cut_grads=self.cut_grads,
                             layers=self.layers)

    def factors_needed(self) -> bool:
        """Whether this step forms the task gradients (not a step that reuses weights)."""
        return not (isinstance(self.method, GramianWeighting) and self.reusing()
                    and not self.want_gramian and not self.options.masked)

    def weights_of(self, gramian: Tensor | None) -> Tensor:
        """This step's weights: reused (update_every), or solved from `gramian`."""
        assert isinstance(self.method, GramianWeighting)
        every = self.options.update_every
        reused = None if self.state is None or every == 1 else self.state.reuse(self.names, every)
        if reused is not None:
            return reused.to(self.vector.dtype)
        assert gramian is not None
        w = self.method.gramian_weights(gramian.detach()).to(self.vector.dtype)
        if self.state is not None and every > 1:
            self.state.cached = dict(zip(self.names, w.tolist(), strict=True))
        return w

    def reusing(self) -> bool:
        every = self.options.update_every
        return self.state is not None and every > 1 and (
            self.state.reuse(self.names, every) is not None)

    def done(self, weights: Tensor | None, gramian: Tensor | None) -> BalanceResult:
        if self.state is not None:
            self.state.step += 1
        logged = gramian.detach() if self.want_gramian and gramian is not None else None
        listed = {} if weights is None else dict(
            zip(self.names, weights.tolist(), strict=True))
        return BalanceResult(listed, logged)

    def on_representation(self, features: Tensor | GradientEdge) -> BalanceResult:
        """The method on the task gradients w.r.t. `features`; their combination is then
        back-propagated through the trunk (one ordinary backward)."""
        rows = cut_rows(self.losses, features)
        if rows is None:
            raise ValueError("representation=True: no loss depends on the representation")
        jacobian = rows.reshape(len(self.losses), -1)
        gramian = jacobian @ jacobian.T if self.want_gramian or not self.reusing() else None
        if isinstance(self.method, JacobianAggregator):
            weights, update = None, self.method.aggregate(jacobian)
        else:
            weights = self.weights_of(gramian)
            update = weights @ jacobian
        torch.autograd.backward(features, grad_tensors=update.view_as(rows[0]),
                                inputs=self.params, retain_graph=True)
        return self.done(weights, gramian)

    def gramian_method(self, cut: Tensor | GradientEdge | None,
                       closure: Closure | None) -> BalanceResult:
        if self.reusing() and not self.want_gramian and not self.options.masked:
            weights = self.weights_of(None)  # reused: one backward, as cheap as `ew`
            torch.autograd.backward((weights * self.vector).sum(), inputs=self.params)
            return self.done(weights, None)
        gradients = self.task_gradients(cut)
        if self.options.masked or self.options.sam_rho is not None:
            return self.dense(gradients, closure)
        gramian = gradients.gramian()
        weights = self.weights_of(gramian)
        gradients.accumulate(weights)
        return self.done(weights, gramian)

    def jacobian_method(self, cut: Tensor | GradientEdge | None,
                        closure: Closure | None) -> BalanceResult:
        assert isinstance(self.method, JacobianAggregator)
        chosen = self.method.tasks_for_step(self.names)
        full = None
        if chosen != self.names:  # a method that needs some tasks' gradients only
            full = self.task_gradients(cut) if self.want_gramian else None
            keep = [self.names.index(n) for n in chosen]
            self.losses = [self.losses[i] for i in keep]
            self.names = chosen
            if self.cut_grads is not None:
                self.cut_grads = self.cut_grads[keep]
        gradients = self.task_gradients(cut)
        logged = (full or gradients).gramian() if self.want_gramian else None
        column = None if self.options.masked or self.options.sam_rho else (
            self.method.column_aggregator(gradients.offsets[-1]))
        if column is None:
            return self.dense(gradients, closure, logged)
        with torch.no_grad():
            for param, update in _column_updates(gradients, column):
                _add_into(param, update)
        return self.done(None, logged)

    def combine(self, jacobian: Tensor) -> tuple[Tensor, Tensor | None]:
        """The method's update of a (possibly restricted) Jacobian and its weights."""
        if isinstance(self.method, JacobianAggregator):
            return self.method.aggregate(jacobian), None
        weights = self.weights_of(jacobian @ jacobian.T)
        return weights @ jacobian, weights

    def dense(self, gradients: TaskGradients, closure: Closure | None,
              logged: Tensor | None = None) -> BalanceResult:
        """Sparse and SAM: the method on explicit (possibly restricted) task gradients."""
        if logged is None and self.want_gramian:
            logged = gradients.gramian()
        mask = None
        if self.options.masked:
            assert self.state is not None and self.options.sparse is not None
            if self.state.mask is None:
                self.state.mask = _choose_mask(gradients, self.options.sparse)
            mask = self.state.mask
            jacobian = _restricted(gradients, mask)
        else:
            jacobian = gradients.jacobian()
        update, weights = self.combine(jacobian)
        if self.options.sam_rho is not None:
            full_jacobian = jacobian if mask is None else gradients.jacobian()
            flat = _flat_gradients(self, full_jacobian, closure, self.options.sam_rho)
            flat = flat - full_jacobian
            sharp = flat if mask is None else flat[:, mask]
            update = update + (self.method.aggregate(sharp)
                               if isinstance(self.method, JacobianAggregator)
                               else self.method.gramian_weights((sharp @ sharp.T).detach())
                               .to(sharp.dtype) @ sharp)
        if mask is not None:
            full = torch.zeros(gradients.offsets[-1], dtype=update.dtype, device=update.device)
            full[mask] = update
            update = full
        _accumulate_flat(self.params, update)
        return self.done(weights, logged)


def _column_updates(
    gradients: TaskGradients, column: Callable[[Tensor, int], Tensor]
) -> list[tuple[Tensor, Tensor]]:
    """Each parameter's flat update from a per-column method, block by block."""
    offsets = gradients.offsets
    out = [torch.empty(p.numel(), dtype=p.dtype, device=p.device) for p in gradients.params]
    for i, start, block in gradients.blocks():
        n = block.shape[1]
        out[i][start : start + n].copy_(column(block, offsets[i] + start))
    return list(zip(gradients.params, out, strict=True))


def _add_into(param: Tensor, flat: Tensor) -> None:
    param.grad = flat.view_as(param) if param.grad is None else param.grad.add_(
        flat.view_as(param))


def _restricted(gradients: TaskGradients, mask: Tensor) -> Tensor:
    """The T x K per-task gradients of the masked entries, gathered a block at a time."""
    offsets = gradients.offsets
    pieces = [
        block[:, mask[offsets[i] + start : offsets[i] + start + block.shape[1]]]
        for i, start, block in gradients.blocks()
    ]
    if pieces:
        return torch.cat(pieces, dim=1)
    like = gradients.other_grads
    return like.new_zeros(gradients.tasks, 0)


def _choose_mask(gradients: TaskGradients, fraction: float) -> Tensor:
    """The mask of the `fraction` of entries with the largest |Σ_t g_t|."""
    offsets = gradients.offsets
    summed = gradients.other_grads.new_zeros(offsets[-1])
    for i, start, block in gradients.blocks():
        summed[offsets[i] + start : offsets[i] + start + block.shape[1]] = block.sum(0)
    keep = math.ceil(fraction * summed.numel())
    mask = torch.zeros(summed.numel(), dtype=torch.bool, device=summed.device)
    mask[summed.abs().topk(keep).indices] = True
    return mask


def _flat_gradients(run: _Run, jacobian: Tensor, closure: Closure | None,
                    rho: float) -> Tensor:
    """Each task's gradient at its own worst-case perturbation θ + ρ g_t / |g_t|."""
    if closure is None:
        raise ValueError("sam_rho needs a closure that re-evaluates the batch's losses: "
                         "pass closure= (or call set_closure(fn) on the balancer)")
    params = run.params
    flat = torch.zeros_like(jacobian)
    for t, name in enumerate(run.names):
        norm = jacobian[t].norm()
        if norm == 0:
            flat[t] = jacobian[t]
            continue
        saved = [p.detach().clone() for p in params]
        _shift(params, rho * jacobian[t] / norm)
        try:
            grads = torch.autograd.grad(closure()[name], params, allow_unused=True)
        finally:
            with torch.no_grad():
                for p, value in zip(params, saved, strict=True):
                    p.copy_(value)
        flat[t] = torch.cat([
            torch.zeros(p.numel(), dtype=jacobian.dtype, device=p.device)
            if g is None else g.flatten()
            for g, p in zip(grads, params, strict=True)
        ])
    return flat


def _shift(params: Sequence[Tensor], step: Tensor) -> None:
    offset = 0
    with torch.no_grad():
        for p in params:
            p.add_(step[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def _accumulate_flat(params: Sequence[Tensor], update: Tensor) -> None:
    """Add a flat update vector into the `.grad` of `params` (in order)."""
    offset = 0
    for p in params:
        n = p.numel()
        chunk = update[offset : offset + n].view_as(p)
        p.grad = chunk.clone() if p.grad is None else p.grad.add_(chunk)
        offset += n


class Balancer:
    """A method with its engine options and their state: what `balance.get` builds and the
    trainer checkpoints. `balance.backward(losses, shared_params, balancer)` runs it."""

    def __init__(self, method: Method, options: Options | None = None) -> None:
        self.method = method
        self.options = options or Options()
        self.options.check(method)
        self.state = EngineState()
        self.closure: Closure | None = None

    @property
    def needs_all_tasks(self) -> bool:
        return self.method.needs_all_tasks

    @property
    def supports_features(self) -> bool:
        return self.method.supports_features

    @property
    def task_names(self) -> list[str]:
        return self.method.task_names

    def setup(self, task_names: Sequence[str]) -> None:
        self.method.setup(task_names)

    def parameters(self) -> list[nn.Parameter]:
        return self.method.parameters()

    def set_closure(self, closure: Closure) -> None:
        """`closure()` re-evaluates the current batch's losses with gradients (`sam_rho`)."""
        self.closure = closure

    def after_step(self, recompute_losses: Closure) -> None:
        self.method.after_step(recompute_losses)

    def reset(self) -> None:
        self.method.reset()
        self.state = EngineState()

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.method.state_dict(), "engine": self.state.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.method.load_state_dict(state["method"])
        self.state.load_state_dict(state["engine"])

    def run(
        self,
        losses: Mapping[str, Tensor],
        shared_params: Sequence[Tensor],
        features: Tensor | None = None,
        task_params: Sequence[Tensor] | None = None,
        gramian: bool = False,
    ) -> BalanceResult:
        """What `balance.backward(losses, shared_params, self, ...)` runs: the engine with
        this balancer's method, options, state and closure (a subclass may reduce across
        processes first, see `polytask.train.distributed`)."""
        return _balance(losses, shared_params, self.method, features, self.options,
                        task_params, self.state, self.closure, gramian)

    def backward(
        self,
        losses: Mapping[str, Tensor],
        shared_params: Sequence[Tensor],
        features: Tensor | None = None,
        task_params: Sequence[Tensor] | None = None,
    ) -> dict[str, float]:
        """Deprecated: use `balance.backward(losses, shared_params, balancer)`, which returns
        a `BalanceResult`. Accumulates the update into `.grad`; returns the weights."""
        warnings.warn(
            "Balancer.backward is deprecated: call polytask.balance.backward(losses, "
            "shared_params, balancer), which returns a BalanceResult",
            DeprecationWarning,
            stacklevel=2,
        )
        return backward(losses, shared_params, self, features, task_params=task_params).weights


def get(name: str, **hyperparameters: Any) -> Balancer:
    """Build a registered method with its engine options: `balance.get("cagrad", c=0.4)`,
    `balance.get("pcgrad", update_every=3)`. Keywords in `OPTION_NAMES` set the engine's
    `Options`; the others go to the method's constructor."""
    values = {k: hyperparameters.pop(k) for k in list(hyperparameters) if k in OPTION_NAMES}
    return Balancer(BALANCERS.get(name)(**hyperparameters), Options.of(values))
