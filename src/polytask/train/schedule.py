"""Optimizer and learning-rate schedule: AdamW (or SGD) with warmup then linear/cosine
decay."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn, optim

from polytask.config import TrainConfig


def build_optimizer(model: nn.Module, method_params: Sequence[nn.Parameter],
                    train: TrainConfig) -> optim.Optimizer:
    """AdamW or SGD; biases, norms and the balancer's own parameters get no weight decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.dim() < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if method_params:
        groups.append({"params": list(method_params), "weight_decay": 0.0})
    groups = [g for g in groups if g["params"]]
    if train.optimizer == "sgd":
        return optim.SGD(groups, lr=train.lr, momentum=0.9)
    return optim.AdamW(groups, lr=train.lr)


def lr_factor(step: int, train: TrainConfig) -> float:
    """Multiplier of the peak learning rate after `step` scheduler steps."""
    warmup = round(train.warmup_ratio * train.max_steps)
    if step < warmup:
        return (step + 1) / warmup
    if train.scheduler == "constant":
        return 1.0
    progress = (step - warmup) / max(1, train.max_steps - warmup)
    progress = min(progress, 1.0)
    if train.scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def build_scheduler(optimizer: optim.Optimizer, train: TrainConfig) -> optim.lr_scheduler.LambdaLR:
    return optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, train))
