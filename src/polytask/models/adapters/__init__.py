"""Multi-task adapters, one file each, registered in `ADAPTERS` (see base.py)."""

from polytask.models.adapters.base import ADAPTERS, AdaptedLinear, Adapter, RoutingState
from polytask.registry import import_submodules

import_submodules(__name__)

__all__ = ["ADAPTERS", "AdaptedLinear", "Adapter", "RoutingState"]
