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

A 2-D convolution is the same product on its unfolded (im2col) input: with U the
(B·L) x (C_in·kh·kw) patches of X (L output positions per image) and Z_t reshaped to
(B·L) x C_out, ∇W_t = Z_tᵀ U. A convolution takes that path only where the kernel form wins
(deep layers: few positions, many channels; see `_use_kernel` with B·L rows): where the
explicit per-task gradients are cheaper, torch's own convolution weight-gradient kernels
(in the batched backward) form them faster than a product with U (measured: LeNet on
MultiMNIST ran 2x slower with its convolutions unfolded). Convolutions that are grouped,
transposed, not 2-D, or whose unfolded input would exceed `UNFOLD_ENTRIES` also keep the
batched backward's per-task gradients; the debug log of this module says which and why.

Methods that act per coordinate (GradDrop, sparse training) read the per-task gradients
through `TaskGradients.blocks`: a few rows of a layer's weight at a time, formed from the
factors when needed, so the T x P matrix is never held.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
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

log = logging.getLogger(__name__)

#: node type -> (index of the input's edge, name of the saved input)
_LINEAR_NODES = {"AddmmBackward0": (1, "_saved_mat1"), "MmBackward0": (0, "_saved_self")}
_CONV_NODE = "ConvolutionBackward0"
#: a convolution's unfolded input is formed up to this many entries (128 MB in float32);
#: a larger one keeps explicit per-task gradients from the batched backward
UNFOLD_ENTRIES = 1 << 25
#: default number of entries (T x columns) in one block of `TaskGradients.blocks`; at
#: T = 10, H = 1024 on one CPU core, blocks of 2^20 entries (64 rows) ran fastest of 2^16-2^21
BLOCK = 1 << 20


@dataclass
class LinearLayer:
    """One linear layer found in the graph: its output edge, input and parameters. For a
    convolution, `conv` holds its (stride, padding, dilation) and `inputs` its B x C x H x W
    input, which `unfolded` turns into the (B·L) x (C_in·kh·kw) rows of the linear form."""

    node: Node
    inputs: Tensor
    weight: Tensor
    bias: Tensor | None
    conv: tuple[Sequence[int], Sequence[int], Sequence[int]] | None = None

    def rows(self) -> int:
        """Rows of the linear form: the batch, or for a convolution batch x positions."""
        if self.conv is None:
            return self.inputs.shape[0]
        positions = 1
        for size, k, s, p, d in zip(self.inputs.shape[2:], self.weight.shape[2:], *self.conv,
                                    strict=True):
            positions *= (size + 2 * p - d * (k - 1) - 1) // s + 1
        return self.inputs.shape[0] * positions

    def unfolded(self) -> LinearLayer:
        """The convolution with its input unfolded into rows (im2col)."""
        stride, padding, dilation = self.conv  # type: ignore[misc]
        with torch.no_grad():
            patches = F.unfold(self.inputs, self.weight.shape[2:], dilation=dilation,
                               padding=padding, stride=stride)
        rows = patches.transpose(1, 2).reshape(-1, self.weight[0].numel())
        return LinearLayer(self.node, rows, self.weight, self.bias, self.conv)

    def output_rows(self, z: Tensor, tasks: int) -> Tensor:
        """The T stacked gradients of the layer's output as T x rows x d_out, rows in the
        order of `inputs` (for a convolution: image-major, then output position)."""
        d_out = self.weight.shape[0]
        if self.conv is None:
            return z.reshape(tasks, -1, d_out)
        return z.reshape(tasks, z.shape[1], d_out, -1).transpose(2, 3).reshape(tasks, -1, d_out)


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


def find_linear_layers(root: Tensor | Node | None, params: Sequence[Tensor]) -> list[LinearLayer]:
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
        if type(node).__name__ == _CONV_NODE:
            layer = _found_conv(node, consumers, owned)
            if layer is not None:
                layers.append(layer)
            continue
        kind = _LINEAR_NODES.get(type(node).__name__)
        if kind is None:
            continue
        mat1 = kind[0]
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
        layer = linear_layer(node, weight, bias)
        if layer is not None:
            layers.append(layer)
    return layers


def _found_conv(node: Node, consumers: dict[Node, int], owned: dict[int, Tensor],
                ) -> LinearLayer | None:
    """The layer of a convolution node whose weight is a shared parameter used once."""
    weight = _leaf(node.next_functions[1][0], consumers, owned)
    if weight is None:
        return None
    bias_node = node.next_functions[2][0] if len(node.next_functions) > 2 else None
    return linear_layer(node, weight, _leaf(bias_node, consumers, owned))


def _conv_layer(node: Node, weight: Tensor, bias: Tensor | None) -> LinearLayer | None:
    """A 2-D convolution as a linear layer (its input not unfolded yet); None (logged) for
    a grouped, transposed or other than 2-D one."""
    inputs = getattr(node, "_saved_input", None)
    why = None
    if node._saved_transposed or node._saved_groups != 1:  # type: ignore[attr-defined]
        why = "transposed or grouped"
    elif weight.dim() != 4 or inputs is None or inputs.dim() != 4:
        why = "not a 2-D convolution"
    if why is not None:
        _log_fallback(weight, why)
        return None
    geometry = (node._saved_stride, node._saved_padding,  # type: ignore[attr-defined]
                node._saved_dilation)  # type: ignore[attr-defined]
    return LinearLayer(node, inputs.detach(), weight, bias, geometry)


def _log_fallback(weight: Tensor, why: str) -> None:
    log.debug("convolution with weight %s: %s; its per-task gradients come from the batched "
              "backward instead of the unfolded (im2col) form", tuple(weight.shape), why)


def _factored_conv(layer: LinearLayer, tasks: int) -> LinearLayer | None:
    """A convolution unfolded for the kernel form, or None (logged) where the explicit
    per-task gradients of the batched backward are cheaper or the rows too many."""
    rows, d_in, d_out = layer.rows(), layer.weight[0].numel(), layer.weight.shape[0]
    if not _use_kernel(rows, d_in, d_out, tasks):
        _log_fallback(layer.weight, f"{rows} rows of width {d_in}: explicit per-task gradients "
                      "cost less than the kernel form")
        return None
    if rows * d_in > UNFOLD_ENTRIES:
        _log_fallback(layer.weight, f"unfolded input of {rows * d_in} entries > "
                      f"UNFOLD_ENTRIES ({UNFOLD_ENTRIES})")
        return None
    return layer.unfolded()


def linear_layer(node: Node, weight: Tensor, bias: Tensor | None) -> LinearLayer | None:
    """The layer of a linear (or 2-D convolution) node whose weight (and bias) were found
    in the graph; None when its saved input is not a matrix or it scales its product
    (alpha, beta != 1), or for a convolution the unfolded form does not apply."""
    if type(node).__name__ == _CONV_NODE:
        return _conv_layer(node, weight, bias)
    if getattr(node, "_saved_alpha", 1) != 1 or getattr(node, "_saved_beta", 1) != 1:
        return None
    inputs = getattr(node, _LINEAR_NODES[type(node).__name__][1])
    if inputs is None or inputs.dim() != 2:
        return None
    return LinearLayer(node, inputs.detach(), weight, bias)


#: at most this many entries of explicit per-task weight gradients are kept between
#: `gramian()` and `accumulate()` (128 MB in float32); beyond it they are formed again
KEEP_ENTRIES = 1 << 25


def _use_kernel(batch: int, d_in: int, d_out: int, tasks: int) -> bool:
    """Whether the kernel form costs fewer multiply-adds than the explicit per-task weight
    gradients, counting the Gramian and the update (the explicit update is a weighted sum of
    the kept gradients; the kernel one a product with the layer input)."""
    explicit = tasks * batch * d_in * d_out + (tasks * tasks + tasks) * d_in * d_out
    kernel = (batch * batch * d_in + tasks * batch * batch * d_out
              + tasks * tasks * batch * d_out + batch * d_in * d_out)
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

    The engine may pass what it already has for a `GradientEdge` cut: `cut_grads`, the T
    stacked per-task gradients there, and `layers`, the linear layers below it (both are
    otherwise computed here). Explicit per-task weight gradients formed by `gramian()` are
    kept (up to `KEEP_ENTRIES` entries) so that `accumulate` only sums them.
    """

    def __init__(
        self,
        losses: Losses,
        params: Sequence[Tensor],
        features: Tensor | GradientEdge | None = None,
        *,
        cut_grads: Tensor | None = None,
        layers: list[LinearLayer] | None = None,
    ) -> None:
        self.params = list(params)
        #: Where each parameter starts in the flattened parameter vector (and its length).
        self.offsets = [0]
        for p in self.params:
            self.offsets.append(self.offsets[-1] + p.numel())
        root: Tensor | GradientEdge | None = features
        if isinstance(features, GradientEdge) and not isinstance(losses, Tensor):
            cut = cut_rows(losses, features) if cut_grads is None else cut_grads
        else:
            cut = cut_at_features(losses, features, self.params)
        if cut is None or root is None:
            root = as_vector(losses)
        self.tasks = root.numel() if isinstance(root, Tensor) and cut is None else len(losses)
        like = losses if isinstance(losses, Tensor) else losses[0]
        root_node = root.node if isinstance(root, GradientEdge) else root.grad_fn
        if layers is None or cut is None or not isinstance(root, GradientEdge):
            layers = find_linear_layers(root_node, self.params)
        factored = (layer if layer.conv is None else _factored_conv(layer, self.tasks)
                    for layer in layers)
        self.layers = [layer for layer in factored if layer is not None]
        #: per layer: the explicit per-task weight gradients (transposed: T x d_in·d_out)
        #: and bias gradients (T x d_out) when `gramian()` formed and kept them
        self.explicit: dict[int, tuple[Tensor, Tensor | None]] = {}
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
            None if z is None else layer.output_rows(z, self.tasks)
            for z, layer in zip(outputs, self.layers, strict=True)
        ]
        self.other_grads = flatten_grads(grads, self.others, self.tasks, like)

    @torch.no_grad()
    def gramian(self) -> Tensor:
        t = self.tasks
        g = self.other_grads @ self.other_grads.T
        kept = 0
        for i, (layer, z) in enumerate(zip(self.layers, self.outputs, strict=True)):
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
                continue
            rows, sums = self._explicit_grads(layer, z)
            g = g + rows @ rows.T
            if sums is not None:
                g = g + sums @ sums.T
            if kept + rows.numel() <= KEEP_ENTRIES:
                kept += rows.numel()
                self.explicit[i] = (rows, sums)
        return (g + g.T) / 2

    def _explicit_grads(self, layer: LinearLayer, z: Tensor) -> tuple[Tensor, Tensor | None]:
        """The T per-task gradients of the layer's weight, transposed (T x d_in·d_out; the
        product runs faster in this layout), and of its bias."""
        rows = torch.matmul(layer.inputs.T, z).reshape(self.tasks, -1)
        return rows, None if layer.bias is None else z.sum(1)

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
                d_out, d_in = p.shape[0], p[0].numel()
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
        for i, (layer, z) in enumerate(zip(self.layers, self.outputs, strict=True)):
            if z is None:
                continue
            if i in self.explicit:
                rows, sums = self.explicit[i]
                d_out = layer.weight.shape[0]
                update = (w @ rows).view(-1, d_out).T.contiguous().view(layer.weight.shape)
                add_grad(layer.weight, update, fresh=True)
                if layer.bias is not None and sums is not None:
                    add_grad(layer.bias, w @ sums, fresh=True)
                continue
            combined = (w @ z.reshape(self.tasks, -1)).view(z.shape[1:])
            add_grad(layer.weight, (combined.T @ layer.inputs).view(layer.weight.shape),
                     fresh=True)
            if layer.bias is not None:
                add_grad(layer.bias, combined.sum(0), fresh=True)
        if not self.others:
            return
        update = w @ self.other_grads
        offset = 0
        for p in self.others:
            add_grad(p, update[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def add_grad(param: Tensor, value: Tensor, fresh: bool = False) -> None:
    """Add `value` into `param.grad`; a `fresh` value (a new tensor nobody else holds)
    becomes the gradient itself instead of a copy."""
    if param.grad is not None:
        param.grad.add_(value.to(param.dtype))
    elif fresh and value.dtype == param.dtype and value.is_contiguous():
        param.grad = value
    else:
        param.grad = value.to(param.dtype).clone()
