"""Multi-task adapters (issue: train low-rank adapters for many tasks at once).

`names()` lists the registered adapters; `model.adapter: {name: ...}` in a config picks one
(see docs/adapters.md and `polytask methods`).
"""

from __future__ import annotations

from polytask.models.adapters import ADAPTERS, Adapter

__all__ = ["ADAPTERS", "Adapter", "names"]


def names() -> list[str]:
    """The registered adapter names, sorted."""
    return ADAPTERS.names()
