"""What `polytask tasks list` and `polytask tasks show NAME` print."""

from __future__ import annotations

import yaml
from rich.table import Table

from polytask.tasks.catalog import catalog_task, entries, entry


def catalog_table() -> Table:
    """One row per catalog entry: name, kind, official metric, description (`show` gives
    the source and the rest)."""
    table = Table(title="polytask task catalog: name one in `tasks:`; `polytask tasks show "
                  "NAME` for details", box=None, title_justify="left")
    for column in ("name", "kind", "metric"):
        table.add_column(column, no_wrap=True)
    table.add_column("description", overflow="fold")
    for name, item in entries().items():
        table.add_row(name, item.kind, item.metric or "(kind default)", item.description)
    return table


def entry_yaml(name: str) -> str:
    """The entry `name` as declared (YAML), then the task section it becomes in a run."""
    declared = entry(name).model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    task = catalog_task(name).model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    return (f"# {name}: the catalog entry\n"
            + yaml.safe_dump({name: declared}, sort_keys=False, allow_unicode=True, width=100)
            + "\n# the task it declares in a run (`tasks: [" + name + "]`)\n"
            + yaml.safe_dump(task, sort_keys=False, allow_unicode=True, width=100))
