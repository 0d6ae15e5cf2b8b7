"""ZipIt!: merge models trained from different initialisations by matching their features.

Stoica et al. 2024, "ZipIt! Merging Models from Different Tasks without Training" (ICLR).

**What it aligns.** A *feature space* is the hidden layer between two `nn.Linear` modules P
and C where C's whole input is an elementwise activation (identity, ReLU, GELU, tanh-GELU,
SiLU, tanh; dropout is the identity in eval mode) of P's output. They are found by tracing
one batch through the backbone, with no per-family code. In polytask's MLP backbone these
are the hidden layers (``mlp.0 -> mlp.2``, ``mlp.2 -> mlp.4``, ...); in a BERT-like encoder,
the feed-forward blocks' intermediate neurons (``intermediate.dense -> output.dense``). Only
these spaces are aligned: P's output rows (weight and bias) are zipped, C's input columns
unzipped. Every other parameter (embeddings, attention, layer norms, the FFN output bias, the
residual stream) is averaged over the experts: for transformers this assumes the experts
share the residual basis (fine-tuned from one pretrained model), and it is lossy for the MLP
backbone's categorical embeddings when the experts come from different initialisations.

**Zip.** For each space, the features of all N experts (N·d of them) are computed on every
task's merge inputs; their correlations are matched greedily, highest first, across models
and within one model (at most ⌊β·(N−1)·d/N⌋ within-model merges per model), until d merged
features remain; after each match the merged feature's correlations become the minimum of
its members' times α (as in the authors' matching function). A group may not match one that
would give it two features of one model once that model's within-model budget is spent (with
β = 0, from the start). When only such matches are left before d features remain (every two
groups share a model, e.g. an A-B, an A-C and a B-C pair), the budget is lifted and the last
groups are matched by correlation alone; the report counts the groups holding several features
of one model. The *merge* matrix averages each group's members; the *unmerge* matrix copies the
merged feature back to every member.

**Partial zipping.** ``layers: k`` zips the first k feature spaces (in forward order). Every
parameter used from the k-th space's consumer onward is kept **per task**: the task's own
weights, with that consumer's input columns unzipped. The layer producing the backbone's
output features (the last `nn.Linear` of the MLP backbone) is always kept per task, since each
task's head reads features in its own expert's basis. Per-task parameters are stored under
``zipit.<task>.<key>`` and the shared key is left out; `task_state(merged, task)` gives one
task's complete backbone state dict. A BERT-like encoder with all spaces zipped has no
per-task part.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytask.errors import ConfigError
from polytask.merge._data import features, task_of, with_weights
from polytask.merge._unlabelled import device_of, input_batches, on_device
from polytask.merge.base import MERGERS, MergeData, Merger, StateDict
from polytask.models.inputs import Encoded

#: prefix of the per-task entries of a partially zipped state dict
PREFIX = "zipit."

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": lambda x: x,
    "relu": torch.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "tanh": torch.tanh,
}


def task_state(merged: Mapping[str, Tensor], task: str) -> StateDict:
    """Task `task`'s backbone from a zipit result: the shared entries, plus the task's
    ``zipit.<task>.<key>`` entries under ``<key>`` (other tasks' entries dropped). A state
    dict without zipit entries comes back unchanged."""
    prefix = f"{PREFIX}{task}."
    state = {key: value for key, value in merged.items() if not key.startswith(PREFIX)}
    state.update({key[len(prefix):]: value for key, value in merged.items()
                  if key.startswith(prefix)})
    return state


def is_per_task(merged: Mapping[str, Tensor]) -> bool:
    """True when the merged state dict keeps some layers per task (partial zipping)."""
    return any(key.startswith(PREFIX) for key in merged)


def zip_matrices(correlation: Tensor, num_models: int, alpha: float = 0.3,
                 beta: float = 0.125) -> tuple[Tensor, Tensor]:
    """ZipIt's greedy matching of O = num_models·d features (their O x O `correlation`, the
    models' features side by side) down to d merged ones.

    Memory is O(O²) (the similarities, and which pairs of groups may match) and each match
    costs O(O) plus a row maximum per group whose best partner it took. When only disallowed
    matches are left, the within-model limit is lifted (see the module docstring).

    Returns (merge, unmerge): merge (d x O) averages each group's members; unmerge (O x d)
    has a 1 where a model feature belongs to a merged feature (one per row)."""
    size = correlation.shape[0]
    width = size // num_models
    sims = correlation.detach().float().clone()
    sims.fill_diagonal_(-torch.inf)
    allowed = torch.ones(size, size, dtype=torch.bool)  # pairs of groups that may match
    origin = torch.arange(size) // width  # the model of each group's first member
    budget = [int((size - width) // num_models * beta)] * num_models
    for model in range(num_models):
        if budget[model] <= 0:
            _forbid_within(allowed, origin, model)
    groups: dict[int, list[int]] = {i: [i] for i in range(size)}
    best, arg = _best_partners(sims, allowed, torch.arange(size))
    limited = True
    for _ in range(size - width):
        if limited and best.max() == -torch.inf:  # only disallowed matches are left
            limited = False
            allowed.fill_(True)
            best, arg = sims.max(dim=1)
        row = int(best.argmax())
        i, j = sorted((row, int(arg[row])))
        groups[i] += groups.pop(j)
        merged = torch.minimum(sims[i], sims[j]) * alpha
        sims[i], sims[:, i] = merged, merged
        sims[j], sims[:, j] = -torch.inf, -torch.inf
        sims[i, i] = -torch.inf
        joint = allowed[i] & allowed[j]
        allowed[i], allowed[:, i] = joint, joint
        stale = (arg == i) | (arg == j)
        stale[i] = True
        if limited and bool(origin[i] == origin[j]):
            model = int(origin[i])
            budget[model] -= 1
            if budget[model] <= 0:
                _forbid_within(allowed, origin, model)
                stale |= origin == model
        merged = merged.masked_fill(~joint, -torch.inf)
        rises = merged > best
        best[rises], arg[rises] = merged[rises], i
        rows = stale.nonzero().flatten()
        best[rows], arg[rows] = _best_partners(sims, allowed, rows)
        best[j] = -torch.inf
    unmerge = torch.zeros(size, width)
    for column, members in enumerate(groups.values()):
        unmerge[members, column] = 1.0
    merge = (unmerge / unmerge.sum(dim=0, keepdim=True)).T
    return merge, unmerge


def _best_partners(sims: Tensor, allowed: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """For each of `rows`: its highest similarity to a group it may match, and that group."""
    return sims[rows].masked_fill(~allowed[rows], -torch.inf).max(dim=1)


def _forbid_within(allowed: Tensor, origin: Tensor, model: int) -> None:
    """No more matches between two groups that both start in `model`."""
    inside = (origin == model).nonzero().flatten()
    allowed[inside[:, None], inside[None, :]] = False


@dataclass
class _Space:
    """A feature space: each consumer's whole input is `activation(producer(x))`."""

    producer: str
    consumers: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.producer} -> {', '.join(self.consumers)}"


@dataclass
class _Trace:
    """What one forward pass shows about a backbone's structure."""

    spaces: list[_Space]  # in forward order of their producers
    order: dict[str, int]  # module name -> index of its first call
    output_producer: str | None  # the Linear whose activated output is the backbone output


@MERGERS.register("zipit", paper="ZipIt! Merging Models from Different Tasks without "
                  "Training (Stoica et al. 2024)")
class ZipIt(Merger):
    """Merges experts trained from different initialisations (or the same one) by zipping the
    hidden features between linear layers: greedy feature matching across and within models
    on the tasks' merge inputs, then merging matched rows and unmerging the next layer's
    columns; `layers: k` zips only the first k feature spaces and keeps the rest per task.
    See the module docstring for exactly which layers are aligned and how per-task layers are
    stored. The base weights are not used (only their keys and shapes are checked).

    Grid: beta ∈ {0, 0.125, 0.5} (0: matches across models only, like a permutation; the
    authors' default 0.125)."""

    needs_data = True
    grid: ClassVar[dict[str, list[Any]]] = {"beta": [0.0, 0.125, 0.5]}

    def __init__(self, layers: int | None = None, alpha: float = 0.3, beta: float = 0.125
                 ) -> None:
        super().__init__()
        if layers is not None and layers < 1:
            raise ConfigError(f"zipit: layers={layers!r} must be >= 1 (the number of feature "
                              "spaces to zip), or null to zip them all.")
        if not 0.0 < alpha <= 1.0 or not 0.0 <= beta <= 1.0:
            raise ConfigError(f"zipit: alpha={alpha!r} must lie in (0, 1] and beta={beta!r} "
                              "in [0, 1].")
        self.layers = layers
        self.alpha = alpha
        self.beta = beta

    def _merge(self, base: StateDict, experts: Mapping[str, StateDict],
               data: MergeData | None) -> StateDict:
        assert data is not None  # merge() checked
        tasks = list(experts)
        nets = [with_weights(data, experts[t]) for t in tasks]
        batches = [(inputs, task_of(data, t, self.name).kind.level) for t in tasks
                   for inputs in input_batches(data.tasks[t], self.name)]
        trace = _trace(nets[0], *batches[0])
        zipped = self._zipped_spaces(trace)
        cut = self._cut(trace, zipped)
        matrices = {producer: zip_matrices(correlation, len(nets), self.alpha, self.beta)
                    for producer, correlation in _correlations(nets, zipped, batches).items()}
        states = [{k: v.float() for k, v in experts[t].items()} for t in tasks]
        out: StateDict = {}
        for key, tensor in base.items():
            module = key.rpartition(".")[0]
            per_task = trace.order.get(module, -1) >= cut
            values = [_with_inputs_unzipped(key, s, t, zipped, matrices)
                      for t, s in enumerate(states)]
            if not tensor.is_floating_point():
                out[key] = experts[tasks[0]][key].clone()
            elif per_task:
                out.update({f"{PREFIX}{t}.{key}": v.to(tensor.dtype)
                            for t, v in zip(tasks, values, strict=True)})
            elif module in matrices:
                merge = matrices[module][0]
                width = merge.shape[0]
                out[key] = sum((merge[:, i * width:(i + 1) * width] @ v
                                for i, v in enumerate(values)), torch.zeros_like(values[0]))
                out[key] = out[key].to(tensor.dtype)
            else:
                out[key] = torch.stack(values).mean(dim=0).to(tensor.dtype)
        self._report(trace, zipped, matrices, cut, base, len(nets))
        return out

    def _zipped_spaces(self, trace: _Trace) -> list[_Space]:
        if not trace.spaces:
            raise ConfigError(
                "zipit: the backbone has no feature space to zip (an nn.Linear whose activated "
                "output is the whole input of another nn.Linear, as in an MLP or a "
                "transformer's feed-forward block); use another merging method.")
        count = len(trace.spaces) if self.layers is None else self.layers
        if count > len(trace.spaces):
            raise ConfigError(
                f"zipit: layers={self.layers} but the backbone has {len(trace.spaces)} feature "
                f"space(s) ({'; '.join(str(s) for s in trace.spaces)}); use layers <= "
                f"{len(trace.spaces)} or null for all.")
        return trace.spaces[:count]

    def _cut(self, trace: _Trace, zipped: list[_Space]) -> float:
        """The call index from which parameters are kept per task (inf: none)."""
        cut = float("inf")
        if self.layers is not None and self.layers < len(trace.spaces):
            cut = min(trace.order[c] for c in zipped[-1].consumers)
        if trace.output_producer is not None:
            cut = min(cut, trace.order[trace.output_producer])
        return cut

    def _report(self, trace: _Trace, zipped: list[_Space],
                matrices: dict[str, tuple[Tensor, Tensor]], cut: float, base: StateDict,
                models: int) -> None:
        for space in zipped:
            unmerge = matrices[space.producer][1]
            width = unmerge.shape[1]
            blocks = unmerge.reshape(models, width, width).sum(dim=1)  # members per model
            within = int((blocks > 1).sum())
            self.note(f"{space}: {models} x {width} features zipped to {width} ({within} "
                      "groups hold several features of one model)")
        kept = [name for name, index in trace.order.items() if index >= cut]
        if kept:
            self.note(f"kept per task (zipit.<task>.*): {', '.join(kept)}")
        aligned = {s.producer for s in zipped} | {c for s in zipped for c in s.consumers}
        averaged = sorted({key.rpartition(".")[0] for key in base}
                          - aligned - set(kept))
        if averaged:
            shown = ", ".join(averaged[:6]) + (f" and {len(averaged) - 6} more"
                                              if len(averaged) > 6 else "")
            self.note(f"averaged (not aligned by zipit): {shown}")


def _with_inputs_unzipped(key: str, state: StateDict, model: int, zipped: list[_Space],
                          matrices: dict[str, tuple[Tensor, Tensor]]) -> Tensor:
    """Expert `model`'s tensor `key`; a zipped space's consumer weight gets its input
    columns mapped to the merged features (W Uᵢ)."""
    tensor = state[key]
    module, _, kind = key.rpartition(".")
    for space in zipped:
        if module in space.consumers and kind == "weight":
            unmerge = matrices[space.producer][1]
            width = unmerge.shape[1]
            return tensor @ unmerge[model * width:(model + 1) * width]
    return tensor


def _trace(net: nn.Module, inputs: Encoded, level: str) -> _Trace:
    """Run one batch and record call order, each Linear's input and output, and the
    backbone's output, to find the feature spaces."""
    order: dict[str, int] = {}
    seen: dict[str, tuple[Tensor, Tensor]] = {}
    hooks = []
    for name, module in net.named_modules():
        if any(True for _ in module.parameters(recurse=False)) or any(
                True for _ in module.buffers(recurse=False)):
            hooks.append(module.register_forward_pre_hook(_first_call(name, order)))
        if isinstance(module, nn.Linear):
            hooks.append(module.register_forward_hook(_first_io(name, seen)))
    try:
        with torch.no_grad():
            output = features(net, on_device(inputs, device_of(net)), level)
    finally:
        for hook in hooks:
            hook.remove()
    linears = sorted(seen, key=order.__getitem__)
    spaces = []
    for producer in linears:
        consumers = tuple(c for c in linears if c != producer and
                          _activation_of(seen[producer][1], seen[c][0]) is not None)
        if consumers:
            spaces.append(_Space(producer, consumers))
    producers = [p for p in linears if _activation_of(seen[p][1], output) is not None]
    return _Trace(spaces, order, producers[-1] if producers else None)


def _first_call(name: str, order: dict[str, int]) -> Callable[..., None]:
    """A forward pre-hook recording the index of the module's first call."""
    def record(*_: Any) -> None:
        order.setdefault(name, len(order))
    return record


def _first_io(name: str, seen: dict[str, tuple[Tensor, Tensor]]) -> Callable[..., None]:
    """A forward hook recording the module's input and output at its first call."""
    def record(_: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        seen.setdefault(name, (args[0], output))
    return record


def _activation_of(produced: Tensor, consumed: Tensor) -> str | None:
    """The elementwise activation that turns `produced` into `consumed`, if any."""
    if produced.shape != consumed.shape:
        return None
    for name, activation in _ACTIVATIONS.items():
        if torch.allclose(activation(produced), consumed, rtol=1e-4, atol=1e-6):
            return name
    return None


def _correlations(nets: list[nn.Module], spaces: list[_Space],
                  batches: list[tuple[Encoded, str]]) -> dict[str, Tensor]:
    """Per space (keyed by producer): the correlation matrix of the experts' features at its
    consumer's input, side by side (model 0's features first), over every merge input (real
    tokens only). One forward pass per expert and batch collects every space."""
    totals: dict[str, Tensor] = {}
    outers: dict[str, Tensor] = {}
    rows: dict[str, int] = {}
    for inputs, level in batches:
        per_net = [_consumer_inputs(net, spaces, inputs, level) for net in nets]
        for space in spaces:
            columns = torch.cat([found[space.producer] for found in per_net], dim=1)
            if space.producer not in totals:
                totals[space.producer] = columns.new_zeros(columns.shape[1])
                outers[space.producer] = columns.new_zeros(columns.shape[1], columns.shape[1])
                rows[space.producer] = 0
            totals[space.producer] += columns.sum(dim=0)
            outers[space.producer] += columns.T @ columns
            rows[space.producer] += columns.shape[0]
    return {key: _normalised(outers[key], totals[key], rows[key]) for key in totals}


def _normalised(outer: Tensor, total: Tensor, rows: int) -> Tensor:
    """The correlation matrix from the sums of the columns and of their outer products."""
    mean = total / rows
    covariance = outer / rows - torch.outer(mean, mean)
    std = covariance.diagonal().clamp(min=0).sqrt()
    return covariance / torch.outer(std, std).clamp(min=1e-7)


def _consumer_inputs(net: nn.Module, spaces: list[_Space], inputs: Encoded, level: str
                     ) -> dict[str, Tensor]:
    """Per space (keyed by producer): its first consumer's input on this batch, one row per
    example (or per real token)."""
    captured: dict[str, Tensor] = {}
    hooks = []
    for space in spaces:
        def keep(_: nn.Module, args: tuple[Any, ...], key: str = space.producer) -> None:
            captured.setdefault(key, args[0])
        hooks.append(net.get_submodule(space.consumers[0]).register_forward_pre_hook(keep))
    try:
        with torch.no_grad():
            features(net, on_device(inputs, device_of(net)), level)
    finally:
        for hook in hooks:
            hook.remove()
    mask = inputs.get("attention_mask")
    return {key: _rows(value.float().cpu(), mask) for key, value in captured.items()}


def _rows(values: Tensor, mask: Tensor | None) -> Tensor:
    """Token-level values (B x L x d) at the real tokens, or any values as rows x d."""
    if values.dim() == 3 and mask is not None and tuple(mask.shape) == tuple(values.shape[:2]):
        return values[mask.bool().cpu()]
    return values.reshape(-1, values.shape[-1])
