"""Building blocks shared by the sharing architectures: MLP experts, softmax gates, mixing.

Every block acts on the last dimension, so B x D and B x L x D features both work.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polytask.errors import ConfigError


def check_option(ok: bool, name: str, value: object, fix: str) -> None:
    """Raise a ConfigError naming the `model.architecture_options` field, its value and a fix."""
    if not ok:
        raise ConfigError(f"model.architecture_options.{name} = {value!r}: {fix}")


def mlp(in_dim: int, width: int, layers: int, dropout: float = 0.0) -> nn.Sequential:
    """`layers` Linear-ReLU blocks of width `width` (dropout after each when `dropout` > 0)."""
    blocks: list[nn.Module] = []
    for i in range(layers):
        blocks += [nn.Linear(in_dim if i == 0 else width, width), nn.ReLU()]
        if dropout:
            blocks.append(nn.Dropout(dropout))
    return nn.Sequential(*blocks)


class Experts(nn.Module):
    """`count` independent MLP experts; outputs stacked on a new dim: (..., count, width)."""

    def __init__(
        self, count: int, in_dim: int, width: int, layers: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.experts = nn.ModuleList(mlp(in_dim, width, layers, dropout) for _ in range(count))

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([expert(x) for expert in self.experts], dim=-2)


class SoftmaxGate(nn.Module):
    """Input-conditioned softmax over `count` experts (MMoE gate): (..., in) -> (..., count)."""

    def __init__(self, in_dim: int, count: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, count)

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.proj(x), dim=-1)


def mix(weights: Tensor, expert_outputs: Tensor) -> Tensor:
    """Weighted sum of expert outputs: (..., E) or (E,) weights, (..., E, H) outputs -> (..., H)."""
    return (weights.unsqueeze(-1) * expert_outputs).sum(dim=-2)
