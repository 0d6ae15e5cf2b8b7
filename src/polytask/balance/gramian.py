"""The T x T Gramian of the per-task gradients, without materialising the T x P Jacobian.

For a linear layer y = X Wᵀ + b (X: B x d_in) with task-t output gradient Z_t (B x d_out),
the task gradients are ∇W_t = Z_tᵀ X and ∇b_t = 1ᵀ Z_t, so

    <∇_s, ∇_t> = <Z_s, (X Xᵀ + 1 1ᵀ) Z_t>

and once the weights w are known the combined update is (Σ_t w_t Z_t)ᵀ X: no second
backward pass. The linear layers are found in the autograd graph (an `addmm`/`mm` node
whose weight, and bias, are shared parameters used nowhere else); one batched autograd call
gives every Z_t together with the per-task gradients of the remaining parameters. Per
layer, the kernel form is used only where it costs fewer operations than forming the
T per-task weight gradients (roughly when d_in > B).

With the per-task losses and the shared representation given (and every path to the shared
parameters going through it), that batched call starts at the representation from T cheap
per-head gradients, so the heads are not traversed with T-row gradients (at T = 10, H = 1024
this was about a third of the step). The Gramian and the update are formed without autograd
recording (the saved layer inputs require grad, and recorded products run slower).

Methods that act per coordinate (GradDrop, sparse training) read the per-task gradients
through `TaskGradients.blocks`: a few rows of a layer's weight at a time, formed from the
factors when needed, so the T x P matrix is never held.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge, Node

from polytask.balance.jacobian import (
    Losses,
    as_vector,
    batched_grads,
    cut_at_features,
    cut_rows,
    flatten_grads,
)

#: node type -> (index of the input's edge, name of the saved input)
_LINEAR_NODES = {"AddmmBackward0": (1, "_saved_mat1"), "MmBackward0": (0, "_saved_self")}
#: default number of entries (T x columns) in one block of `TaskGradients.blocks`; at
#: T = 10, H = 1024 on one CPU core, blocks of 2^20 entries (64 rows) ran fastest of 2^16-2^21
BLOCK = 1 << 20


@dataclass
class _Linear:
    """One linear layer found in the graph: its output edge, input and parameters."""

    node: Node
    inputs: Tensor
    weight: Tensor
    bias: Tensor | None


def _graph(root: Node) -> tuple[list[Node], dict[Node, int]]:
    """Every node reachable from `root` and how many edges point at each."""
    seen: set[Node] = {root}
    order: list[Node] = [root]
    consumers: dict[Node, int] = {}
    stack = [root]
    while stack:
        node = stack.pop()
        for child, _ in node.next_functions:
            if child is None:
                continue
            consumers[child] = consumers.get(child, 0) + 1
            if child not in seen:
                seen.add(child)
                order.append(child)
                stack.append(child)
    return order, consumers


def _leaf(node: Node | None, consumers: dict[Node, int], owned: dict[int, Tensor]) -> Tensor | None:
    """The shared parameter accumulated by `node`, if it is one used by a single edge."""
    if node is None or consumers.get(node, 0) != 1:
        return None
    variable = getattr(node, "variable", None)
    return None if variable is None else owned.get(id(variable))


def find_linear_layers(root: Tensor | Node | None, params: Sequence[Tensor]) -> list[_Linear]:
    """The linear layers below `root` (the loss vector, the shared representation, or the
    node that made it) whose weight (and bias, if any) are among `params` and used once."""
    if isinstance(root, Tensor):
        root = root.grad_fn
    if root is None:
        return []
    owned = {id(p): p for p in params}
    nodes, consumers = _graph(root)
    layers = []
    for node in nodes:
        kind = _LINEAR_NODES.get(type(node).__name__)
        if kind is None or getattr(node, "_saved_alpha", 1) != 1:
            continue
        if getattr(node, "_saved_beta", 1) != 1:
            continue
        mat1, saved = kind
        transpose = node.next_functions[mat1 + 1][0]
        if transpose is None or type(transpose).__name__ != "TBackward0":
            continue
        if consumers.get(transpose, 0) != 1:
            continue
        weight = _leaf(transpose.next_functions[0][0], consumers, owned)
        if weight is None or weight.dim() != 2:
            continue
        bias = None
        if mat1 == 1:
            # None when the bias is no parameter of ours (or is used elsewhere: then it is
            # handled with the other parameters); W's gradient does not depend on it.
            bias = _leaf(node.next_functions[0][0], consumers, owned)
        inputs = getattr(node, saved)
        if inputs is None or inputs.dim() != 2:
            continue
        layers.append(_Linear(node, inputs.detach(), weight, bias))
    return layers


def _use_kernel(batch: int, d_in: int, d_out: int, tasks: int) -> bool:
    explicit = tasks * batch * d_in * d_out + tasks * tasks * d_in * d_out
    kernel = batch * batch * d_in + tasks * batch * batch * d_out + tasks * tasks * batch * d_out
    return kernel < explicit


class TaskGradients:
    """The per-task gradients of `params`, held in factored form where that is cheaper.

    `losses` is the loss vector, or the sequence of per-task losses; with the latter and the
    shared representation `features`, the batched backward starts at `features` when every
    path to `params` passes through it (see `polytask.balance.jacobian.cut_at_features`).
    `features` may also be a `GradientEdge` that the caller knows every such path crosses
    (`polytask.balance.engine.find_shared_graph` finds one in the graph).
    `gramian()` is the T x T matrix of their inner products; `accumulate(w)` adds
    Σ_t w_t ∇L_t into the parameters' `.grad` without another backward pass.
    """

    def __init__(
        self,
        losses: Losses,
        params: Sequence[Tensor],
        features: Tensor | GradientEdge | None = None,
    ) -> None:
        self.params = list(params)
        #: Where each parameter starts in the flattened parameter vector (and its length).
        self.offsets = [0]
        for p in self.params:
            self.offsets.append(self.offsets[-1] + p.numel())
        root: Tensor | GradientEdge | None = features
        if isinstance(features, GradientEdge) and not isinstance(losses, Tensor):
            cut = cut_rows(losses, features)
        else:
            cut = cut_at_features(losses, features, self.params)
        if cut is None or root is None:
            root = as_vector(losses)
        self.tasks = root.numel() if isinstance(root, Tensor) and cut is None else len(losses)
        like = losses if isinstance(losses, Tensor) else losses[0]
        root_node = root.node if isinstance(root, GradientEdge) else root.grad_fn
        self.layers = find_linear_layers(root_node, self.params)
        in_layers = {id(p) for layer in self.layers for p in (layer.weight, layer.bias)}
        self.others = [p for p in self.params if id(p) not in in_layers]
        # a layer that produced `features` itself receives the cut gradients directly
        at_root = [cut is not None and layer.node is root_node for layer in self.layers]
        edges = [
            GradientEdge(layer.node, 0)
            for layer, direct in zip(self.layers, at_root, strict=True)
            if not direct
        ]
        grads = list(batched_grads(root, [*edges, *self.others], cut))
        outputs: list[Tensor | None] = []
        for direct in at_root:
            outputs.append(cut if direct else grads.pop(0))
        self.outputs = [
            None if z is None else z.reshape(self.tasks, -1, layer.weight.shape[0])
            for z, layer in zip(outputs, self.layers, strict=True)
        ]
        self.other_grads = flatten_grads(grads, self.others, self.tasks, like)

    @torch.no_grad()
    def gramian(self) -> Tensor:
        t = self.tasks
        g = self.other_grads @ self.other_grads.T
        for layer, z in zip(self.layers, self.outputs, strict=True):
            if z is None:
                continue
            x = layer.inputs
            b, d_in = x.shape
            if _use_kernel(b, d_in, z.shape[-1], t):
                kernel = x @ x.T
                if layer.bias is not None:
                    kernel += 1
                flat = z.reshape(t, -1)
                g = g + flat @ (kernel @ z).reshape(t, -1).T
            else:
                rows = torch.matmul(x.T, z).reshape(t, -1)  # task t: (∇W_t)ᵀ, d_in x d_out
                g = g + rows @ rows.T
                if layer.bias is not None:
                    sums = z.sum(1)
                    g = g + sums @ sums.T
        return (g + g.T) / 2

    @torch.no_grad()
    def jacobian(self, size: int | None = None) -> Tensor:
        """The T x P matrix of per-task gradients (parameters in the order given), formed
        from the factors: the `blocks(size)` side by side, so that a method that works
        block by block computes, bit for bit, what it would on this matrix."""
        like = self.other_grads
        offsets = self.offsets
        out = torch.empty(self.tasks, offsets[-1], dtype=like.dtype, device=like.device)
        for i, start, block in self.blocks(size):
            first = offsets[i] + start
            out[:, first : first + block.shape[1]] = block
        return out

    @torch.no_grad()
    def blocks(self, size: int | None = None) -> Iterator[tuple[int, int, Tensor]]:
        """The columns of `jacobian()` a block at a time, without forming the T x P matrix.

        Yields `(i, start, block)`: `block` (T x n) holds the per-task gradients of entries
        `start` to `start + n` of the flattened `params[i]`. Parameters come in the order
        given and each one's entries in order, so the blocks tile `jacobian()` left to right.
        A linear layer's weight comes in blocks of whole rows, each formed from the factors
        (the T products Z_t[:, rows]ᵀ X) when it is needed, of about `size` entries in all
        (T n; `BLOCK` by default), so that a consumer's per-block work stays in cache. Every
        block is a new tensor, which the consumer may overwrite.
        """
        size = BLOCK if size is None else size
        t = self.tasks
        layers = {}
        for layer, z in zip(self.layers, self.outputs, strict=True):
            layers[id(layer.weight)] = (layer, z, False)
            if layer.bias is not None:
                layers[id(layer.bias)] = (layer, z, True)
        others: dict[int, int] = {}
        offset = 0
        for p in self.others:
            others[id(p)] = offset
            offset += p.numel()
        like = self.other_grads
        for i, p in enumerate(self.params):
            n = p.numel()
            found = layers.get(id(p))
            if found is not None and found[1] is not None:
                layer, z, is_bias = found
                if is_bias:
                    yield i, 0, z.sum(1)
                    continue
                d_out, d_in = p.shape
                # a power of two: matrix products of odd sizes run markedly slower
                rows = 1 << max(0, (size // max(1, t * d_in)).bit_length() - 1)
                x = layer.inputs
                for first in range(0, d_out, rows):
                    last = min(d_out, first + rows)
                    block = torch.matmul(z[:, :, first:last].transpose(1, 2), x)
                    yield i, first * d_in, block.reshape(t, -1)
            else:  # a parameter held as a T x numel matrix, or one no gradient reaches
                base = others.get(id(p))
                step = max(1, size // max(1, t))
                for first in range(0, n, step):
                    last = min(n, first + step)
                    if base is None:
                        block = like.new_zeros(t, last - first)
                    else:
                        block = self.other_grads[:, base + first : base + last].clone()
                    yield i, first, block

    @torch.no_grad()
    def accumulate(self, weights: Tensor) -> None:
        w = weights.to(self.other_grads.dtype).to(self.other_grads.device)
        for layer, z in zip(self.layers, self.outputs, strict=True):
            if z is None:
                continue
            combined = (w @ z.reshape(self.tasks, -1)).view(z.shape[1:])
            _add_grad(layer.weight, combined.T @ layer.inputs, fresh=True)
            if layer.bias is not None:
                _add_grad(layer.bias, combined.sum(0), fresh=True)
        if not self.others:
            return
        update = w @ self.other_grads
        offset = 0
        for p in self.others:
            _add_grad(p, update[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def _add_grad(param: Tensor, value: Tensor, fresh: bool = False) -> None:
    """Add `value` into `param.grad`; a `fresh` value (a new tensor nobody else holds)
    becomes the gradient itself instead of a copy."""
    if param.grad is not None:
        param.grad.add_(value.to(param.dtype))
    elif fresh and value.dtype == param.dtype and value.is_contiguous():
        param.grad = value
    else:
        param.grad = value.to(param.dtype).clone()
