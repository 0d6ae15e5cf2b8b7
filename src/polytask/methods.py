"""Every registered method, across families (what `polytask methods` lists)."""

from __future__ import annotations

from polytask.balance import BALANCERS
from polytask.models.sharing import ARCHITECTURES
from polytask.registry import MethodInfo
from polytask.tasks.kinds import TASK_KINDS
from polytask.tasks.sampling import SAMPLERS
from polytask.train.callbacks import CALLBACKS


def all_methods() -> list[MethodInfo]:
    return [*SAMPLERS.info(), *BALANCERS.info(), *ARCHITECTURES.info(), *TASK_KINDS.info(),
            *CALLBACKS.info()]
