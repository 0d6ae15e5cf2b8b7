"""Bad adapter settings fail before any training, with the field, the value and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from adapters_testlib import TASKS, adapted, adapter_of, bert_encoder, text_config

from polytask import load_config
from polytask.errors import CheckpointError, ConfigError
from polytask.models.adapters import ADAPTERS
from polytask.pipeline import prepare
from tests.conftest import tabular_config


@pytest.mark.parametrize("name", ADAPTERS.names())
@pytest.mark.parametrize("rank", [0, -2])
def test_a_rank_that_is_not_positive_is_refused(name: str, rank: int) -> None:
    with pytest.raises(ConfigError, match=rf"model\.adapter\.r: .*got {rank}"):
        ADAPTERS.get(name)(TASKS, r=rank)


#: Adapters that wrap linear layers (a prompt adapter such as mpt has no target modules).
LINEAR = [n for n in ADAPTERS.names() if adapter_of(adapted(n)).wrapped]


@pytest.mark.parametrize("name", LINEAR)
def test_target_modules_matching_nothing_lists_the_linear_layer_names(name: str) -> None:
    adapter = ADAPTERS.get(name)(TASKS, r=2, target_modules=["q_proj"])
    with pytest.raises(ConfigError, match=r"model.adapter.target_modules") as error:
        adapter.attach(bert_encoder())
    assert "'q_proj'" in str(error.value)
    for linear in ("query", "value", "dense"):
        assert linear in str(error.value)


def test_target_modules_use_peft_matching() -> None:
    """A list matches name suffixes at a dot; a string is one regex over the full name."""
    suffixes = ADAPTERS.get("lora")(TASKS, r=2, target_modules=["query"])
    suffixes.attach(bert_encoder())
    assert sorted(suffixes.wrapped) == [f"encoder.encoder.layer.{i}.attention.self.query"
                                        for i in (0, 1)]
    regex = ADAPTERS.get("lora")(TASKS, r=2, target_modules=r".*layer\.1\..*(query|key)")
    regex.attach(bert_encoder())
    assert sorted(regex.wrapped) == ["encoder.encoder.layer.1.attention.self.key",
                                     "encoder.encoder.layer.1.attention.self.query"]


def test_an_adapter_on_the_mlp_backbone_is_refused(tabular_file: Path) -> None:
    settings = tabular_config(tabular_file)
    settings["model"] = {**settings["model"], "adapter": "lora"}  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match=r"model.adapter: 'lora' .* tabular MLP"):
        prepare(load_config(settings))


def test_a_config_with_a_bad_rank_fails_before_training(tiny_bert: Path,
                                                       text_files: dict[str, Path]) -> None:
    config = load_config(text_config(tiny_bert, text_files, {"name": "task_lora", "r": 0}))
    with pytest.raises(ConfigError, match=r"model.adapter.r"):
        prepare(config)


def test_unknown_adapters_and_options_are_config_errors(tiny_bert: Path,
                                                       text_files: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match=r"unknown adapter 'mtl_lorra'.*'mtl_lora'"):
        load_config(text_config(tiny_bert, text_files, {"name": "mtl_lorra"}))
    with pytest.raises(ConfigError, match=r"model.adapter.num_upp: .* Did you mean 'num_up'"):
        load_config(text_config(tiny_bert, text_files, {"name": "mtl_lora", "num_upp": 2}))
    config = load_config(text_config(tiny_bert, text_files, "task_lora"))  # a bare name
    assert config.model.adapter is not None and config.model.adapter.name == "task_lora"


@pytest.mark.parametrize("name", ADAPTERS.names())
def test_reloading_weights_for_another_task_count_is_a_checkpoint_error(name: str) -> None:
    weights = adapted(name).state_dict()
    with pytest.raises(CheckpointError, match=r"for 3 tasks, but this model has 2 .*a, b"):
        adapted(name, tasks=TASKS[:2]).load_state_dict(weights)
