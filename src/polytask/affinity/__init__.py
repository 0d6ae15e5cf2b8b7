"""Which tasks help each other, and how to group them (issue 11).

    >>> from polytask.affinity import get, best_partitions
    >>> matrix = get("tag", steps=100).measure(config, work_dir, console)
    >>> best_partitions(matrix, max_groups=3).by_count[2].groups

Each affinity method is one file in this folder that registers itself in `AFFINITY`
and returns an `AffinityMatrix` (``values[i][j]``: how much task i helps task j).
`best_partitions` chooses groups from a matrix; `rank_sources` ranks source tasks for a target.
"""

from __future__ import annotations

from typing import Any

from polytask.affinity.base import AFFINITY, AffinityMatrix, AffinityMethod
from polytask.affinity.grouping import GroupingResult, Partition, best_partitions, rank_sources
from polytask.registry import import_submodules

__all__ = [
    "AFFINITY", "AffinityMatrix", "AffinityMethod", "GroupingResult", "Partition",
    "best_partitions", "get", "names", "rank_sources",
]


def get(name: str, **options: Any) -> AffinityMethod:
    """The affinity method registered as `name`, built with its typed `options`.

    Raises:
        polytask.registry.UnknownMethodError: for an unknown name (lists the valid ones).
        TypeError: for an option the method does not take.
    """
    return AFFINITY.get(name)(**options)


def names() -> list[str]:
    """The registered affinity methods, sorted."""
    return AFFINITY.names()


import_submodules(__name__)
