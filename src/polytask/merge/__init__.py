"""Model merging: fine-tune one expert per task from the same backbone, then merge them.

    >>> from polytask import merge
    >>> merger = merge.get("ties", density=0.2, scale=1.0)
    >>> merged = merger.merge(base_state_dict, {"sst2": sst2_state, "qnli": qnli_state})

State dicts hold the backbone only (heads are never merged). Data-free methods (`average`,
`task_arithmetic`, `ties`, `dare`) work on weights alone, and can stream from safetensors
files with `TensorwiseMerger.merge_files`; data-driven ones (`fisher`, `regmean`, ...) need a
`MergeData` (`needs_data = True`). `polytask.merge.functional` holds the pure tensor
primitives. Each method is one file in this folder that registers itself in `MERGERS`.
"""

from __future__ import annotations

import inspect
from typing import Any

from polytask.errors import ConfigError
from polytask.merge.average import Average
from polytask.merge.base import (
    MERGERS,
    MergeData,
    Merger,
    MergeTask,
    StateDict,
    TensorwiseMerger,
)
from polytask.merge.dare import Dare
from polytask.merge.fisher import Fisher
from polytask.merge.regmean import RegMean
from polytask.merge.task_arithmetic import TaskArithmetic
from polytask.merge.ties import Ties
from polytask.registry import UnknownMethodError, import_submodules

__all__ = ["MERGERS", "Average", "Dare", "Fisher", "MergeData", "MergeTask", "Merger",
           "RegMean", "StateDict", "TaskArithmetic", "TensorwiseMerger", "Ties", "get", "names"]


def names() -> list[str]:
    """The registered merging methods, sorted."""
    return MERGERS.names()


def get(name: str, **hyperparameters: Any) -> Merger:
    """The merging method `name`, built with `hyperparameters` (its constructor keywords).

    Raises:
        ConfigError: an unknown method (with a "did you mean") or hyperparameter.
    """
    try:
        cls = MERGERS.get(name)
    except UnknownMethodError as error:
        raise ConfigError(f"merge: {error}") from None
    accepted = [p for p in inspect.signature(cls).parameters if p != "self"]
    unknown = sorted(set(hyperparameters) - set(accepted))
    if unknown:
        raise ConfigError(
            f"merge method {name!r}: unknown hyperparameter {unknown[0]!r}; it takes "
            f"{', '.join(accepted) or 'none'}.")
    return cls(**hyperparameters)


import_submodules(__name__)
