"""`examples/adapters.yaml` is valid as written and with `--set model.adapter.name=NAME` for
every registered adapter (it sets only the options all of them take)."""

from __future__ import annotations

from pathlib import Path

import pytest

from polytask.config import load_config
from polytask.models.adapters import ADAPTERS

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "adapters.yaml"


@pytest.mark.parametrize("name", ADAPTERS.names())
def test_every_adapter_runs_from_the_example(name: str) -> None:
    config = load_config(EXAMPLE, [f"model.adapter.name={name}"])
    assert config.model.adapter is not None and config.model.adapter.name == name
    assert config.suite is not None and config.suite.name == "text"
    assert config.model.backbone is not None and config.model.backbone.name == "minilm-l6"
