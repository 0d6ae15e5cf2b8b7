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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge, Node

from polytask.balance.jacobian import batched_grads

#: node type -> (index of the input's edge, name of the saved input)
_LINEAR_NODES = {"AddmmBackward0": (1, "_saved_mat1"), "MmBackward0": (0, "_saved_self")}


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


def find_linear_layers(losses: Tensor, params: Sequence[Tensor]) -> list[_Linear]:
    """The linear layers whose weight (and bias, if any) are among `params` and used once."""
    if losses.grad_fn is None:
        return []
    owned = {id(p): p for p in params}
    nodes, consumers = _graph(losses.grad_fn)
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
        layers.append(_Linear(node, inputs, weight, bias))
    return layers


def _use_kernel(batch: int, d_in: int, d_out: int, tasks: int) -> bool:
    explicit = tasks * batch * d_in * d_out + tasks * tasks * d_in * d_out
    kernel = batch * batch * d_in + tasks * batch * batch * d_out + tasks * tasks * batch * d_out
    return kernel < explicit


class TaskGradients:
    """The per-task gradients of `params`, held in factored form where that is cheaper.

    `gramian()` is the T x T matrix of their inner products; `accumulate(w)` adds
    Σ_t w_t ∇L_t into the parameters' `.grad` without another backward pass.
    """

    def __init__(self, losses: Tensor, params: Sequence[Tensor]) -> None:
        self.params = list(params)
        self.tasks = losses.numel()
        self.layers = find_linear_layers(losses, self.params)
        in_layers = {id(p) for layer in self.layers for p in (layer.weight, layer.bias)}
        self.others = [p for p in self.params if id(p) not in in_layers]
        edges = [GradientEdge(layer.node, 0) for layer in self.layers]
        grads = batched_grads(losses, [*edges, *self.others])
        self.outputs = list(grads[: len(edges)])
        self.other_grads = torch.cat(
            [
                torch.zeros(self.tasks, p.numel(), dtype=losses.dtype, device=losses.device)
                if g is None
                else g.reshape(self.tasks, -1)
                for g, p in zip(grads[len(edges) :], self.others, strict=True)
            ]
            or [torch.zeros(self.tasks, 0, dtype=losses.dtype, device=losses.device)],
            dim=1,
        )

    def gramian(self) -> Tensor:
        g = self.other_grads @ self.other_grads.T
        for layer, z in zip(self.layers, self.outputs, strict=True):
            x = layer.inputs
            b, d_in = x.shape
            d_out = z.shape[-1]
            if _use_kernel(b, d_in, d_out, self.tasks):
                kernel = x @ x.T
                if layer.bias is not None:
                    kernel = kernel + 1
                flat = z.reshape(self.tasks, -1)
                mixed = (kernel @ z).reshape(self.tasks, -1)
                g = g + flat @ mixed.T
            else:
                rows = torch.einsum("tbo,bi->toi", z, x).reshape(self.tasks, -1)
                if layer.bias is not None:
                    rows = torch.cat([rows, z.sum(1)], dim=1)
                g = g + rows @ rows.T
        return (g + g.T) / 2

    def accumulate(self, weights: Tensor) -> None:
        w = weights.to(self.other_grads.dtype)
        for layer, z in zip(self.layers, self.outputs, strict=True):
            combined = torch.einsum("t,tbo->bo", w, z)
            _add_grad(layer.weight, combined.T @ layer.inputs)
            if layer.bias is not None:
                _add_grad(layer.bias, combined.sum(0))
        update = w @ self.other_grads
        offset = 0
        for p in self.others:
            _add_grad(p, update[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def _add_grad(param: Tensor, value: Tensor) -> None:
    value = value.to(param.dtype)
    param.grad = value.clone() if param.grad is None else param.grad.add_(value)
