"""What every affinity method returns (`AffinityMatrix`) and the interface it implements.

An affinity matrix answers "how much does training on task i help task j?" for every ordered
pair of tasks: ``values[i][j]`` is the effect of source i on target j, higher meaning the two
tasks are better trained together. The diagonal is not defined (NaN). Grouping
(`polytask.affinity.grouping`) maximises the within-group sum of the symmetrised matrix.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from polytask.config import RunConfig
from polytask.registry import Registry


@dataclass
class AffinityMatrix:
    """A T x T inter-task affinity matrix, with what it means and what it cost.

    ``values[i][j]`` is how much task ``tasks[i]`` (source) helps ``tasks[j]`` (target);
    the diagonal is NaN. ``definition`` is one sentence stating the formula.
    """

    method: str
    tasks: list[str]
    values: list[list[float]]
    definition: str
    direction: str = "higher means the tasks help each other"
    symmetric: bool = False
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        size = len(self.tasks)
        if len(self.values) != size or any(len(row) != size for row in self.values):
            raise ValueError(
                f"affinity matrix of method {self.method!r} must be {size} x {size} "
                f"(one row and column per task), got rows of lengths "
                f"{[len(row) for row in self.values]}"
            )

    def array(self) -> np.ndarray:
        """The values as a float array (diagonal NaN)."""
        return np.asarray(self.values, dtype=float)

    def symmetrised(self) -> np.ndarray:
        """(A + Aᵀ) / 2 with a zero diagonal: the pairwise score that grouping maximises.

        A NaN off the diagonal (a pair that could not be measured) counts as 0."""
        values = np.nan_to_num(self.array(), nan=0.0)
        symmetric = (values + values.T) / 2.0
        np.fill_diagonal(symmetric, 0.0)
        return symmetric

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; NaN becomes ``null``."""
        return {
            "method": self.method,
            "tasks": list(self.tasks),
            "values": [[None if math.isnan(v) else float(v) for v in row] for row in self.values],
            "definition": self.definition,
            "direction": self.direction,
            "symmetric": self.symmetric,
            "seconds": self.seconds,
            "details": self.details,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AffinityMatrix:
        """The inverse of `to_json` (``null`` back to NaN)."""
        values = [[math.nan if v is None else float(v) for v in row] for row in data["values"]]
        return cls(
            method=data["method"],
            tasks=list(data["tasks"]),
            values=values,
            definition=data["definition"],
            direction=data.get("direction", "higher means the tasks help each other"),
            symmetric=bool(data.get("symmetric", False)),
            seconds=float(data.get("seconds", 0.0)),
            details=dict(data.get("details", {})),
        )


class AffinityMethod(ABC):
    """One way to measure inter-task affinity; options are typed constructor keywords."""

    @abstractmethod
    def measure(self, config: RunConfig, work_dir: Path, console: Console) -> AffinityMatrix:
        """Measure the affinity of the config's tasks, writing any run files under `work_dir`."""


AFFINITY: Registry[type[AffinityMethod]] = Registry("affinity method")
