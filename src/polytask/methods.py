"""Every registered method, across families (what `polytask methods` lists)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from polytask.affinity import AFFINITY
from polytask.balance import BALANCERS
from polytask.merge import MERGERS
from polytask.method_options import METHOD_FIELDS, method_options
from polytask.models.adapters import ADAPTERS
from polytask.models.sharing import ARCHITECTURES
from polytask.registry import MethodInfo
from polytask.tasks.kinds import TASK_KINDS
from polytask.tasks.sampling import SAMPLERS
from polytask.train import loggers  # noqa: F401  (registers the built-in callbacks)
from polytask.train.callbacks import CALLBACKS


def all_methods() -> list[MethodInfo]:
    return [*SAMPLERS.info(), *BALANCERS.info(), *ARCHITECTURES.info(), *ADAPTERS.info(),
            *TASK_KINDS.info(),
            *CALLBACKS.info(), *MERGERS.info(),
            *AFFINITY.info()]


def method_record(info: MethodInfo) -> dict[str, Any]:
    """One entry of `polytask methods --json`: family, name, paper, summary and, for methods
    a config section names (samplers, balancers, architectures), their options with types
    and defaults."""
    record: dict[str, Any] = dict(info.__dict__)
    for registry in METHOD_FIELDS.values():
        if registry.family == info.family:
            record["options"] = [asdict(o) for o in method_options(registry, info.name)]
    return record
