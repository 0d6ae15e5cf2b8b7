"""The run config: loading from dicts and YAML, `--set` overrides, and errors that name the
field, the bad value and a fix."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from polytask.balance import BALANCERS
from polytask.config import RunConfig, apply_overrides, load_config
from polytask.errors import ConfigError
from polytask.tasks.sampling import SAMPLERS
from polytask.tasks.spec import DataSpec


def base() -> dict[str, Any]:
    return {
        "data": {"path": "rows.csv"},
        "tasks": [
            {"name": "sentiment", "kind": "classification", "input": "text", "label": "y"},
            {"name": "topic", "kind": "classification", "input": "text", "label": "t"},
        ],
    }


def config_error(data: Any, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(data, overrides)
    return str(info.value)


# ------------------------------------------------------------------------ loading


def test_load_from_dict_fills_defaults() -> None:
    cfg = load_config(base())
    assert isinstance(cfg, RunConfig)
    assert [t.name for t in cfg.tasks] == ["sentiment", "topic"]
    assert isinstance(cfg.data, DataSpec) and cfg.data.path == "rows.csv"
    assert cfg.sampler.name == "all" and cfg.balancer.name == "ew"
    assert cfg.model.architecture.name == "hard_sharing"
    assert cfg.train.max_steps == 300 and cfg.train.lr == pytest.approx(1e-3)


def test_load_from_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "name: demo\n"
        "data: {path: rows.csv}\n"
        "tasks:\n"
        "  - {name: a, kind: regression, input: [x1, x2], label: y}\n"
        "  - {name: b, kind: multilabel, input: x1, label: tags}\n"
        "sampler: {name: temperature, temperature: 1e-1}\n"
        "balancer: uw\n"
        "model: {architecture: {name: mmoe}}\n"
        "train: {lr: 3e-4, batch_size: 8, max_steps: 20}\n"
    )
    cfg = load_config(path)
    assert cfg.name == "demo"
    assert cfg.tasks[0].input_columns == ["x1", "x2"]
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.train.batch_size == 8
    assert cfg.balancer.name == "uw" and cfg.model.architecture.name == "mmoe"
    # YAML 1.1 would read 1e-1 as a string; method hyperparameters must be numbers
    assert cfg.sampler.name == "temperature"
    assert cfg.sampler.options == {"temperature": pytest.approx(0.1)}
    assert isinstance(cfg.sampler.options["temperature"], float)
    assert load_config(str(path)).tasks == cfg.tasks  # a str path works too


def test_method_sections_take_name_or_mapping() -> None:
    cfg = load_config({**base(), "sampler": {"name": "annealed", "decay": 0.5},
                       "balancer": "uw", "model": {"architecture": "cgc"}})
    assert cfg.sampler.name == "annealed" and cfg.sampler.options == {"decay": 0.5}
    assert cfg.balancer.name == "uw" and cfg.balancer.options == {}
    assert cfg.model.architecture.name == "cgc"


def test_in_memory_data_stays_in_memory() -> None:
    frame = pd.DataFrame({"text": ["a", "b"], "y": [0, 1], "t": [1, 0]})
    splits = {"train": frame, "validation": frame.iloc[:1]}
    tasks = base()["tasks"]
    cfg = load_config({"data": frame, "tasks": tasks})
    assert cfg.data is frame
    cfg = load_config({"data": splits, "tasks": tasks})
    assert isinstance(cfg.data, dict) and cfg.data["train"] is frame
    assert cfg.data["validation"] is splits["validation"]
    own = [{**tasks[0], "data": frame}, {**tasks[1], "data": {"text": ["a"], "t": [1]}}]
    cfg = load_config({"tasks": own})
    assert cfg.tasks[0].data is frame
    assert cfg.tasks[1].data == {"text": ["a"], "t": [1]}
    assert cfg.dump()["tasks"][0]["data"] == "<in-memory>"


def test_empty_yaml_file_asks_for_tasks(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    message = config_error(path)
    assert "tasks" in message and "suite" in message


# ------------------------------------------------------------------------ errors


def test_unknown_top_level_key_suggests_nearest() -> None:
    message = config_error({**base(), "trian": {"lr": 0.1}})
    assert "trian" in message and "unknown key" in message
    assert "Did you mean 'train'?" in message


def test_unknown_nested_key_suggests_nearest() -> None:
    message = config_error({**base(), "train": {"max_stpes": 5}})
    assert "train.max_stpes" in message and "Did you mean 'max_steps'?" in message
    assert "batch_size" in message  # the valid keys of that section are listed


def test_unknown_key_in_a_task_suggests_nearest() -> None:
    data = base()
    data["tasks"][1]["lable"] = "t"
    message = config_error(data)
    assert "tasks.1.lable" in message and "Did you mean 'label'?" in message


def test_wrong_type_names_field_and_value() -> None:
    message = config_error({**base(), "train": {"batch_size": "many"}})
    assert "train.batch_size" in message and "'many'" in message
    assert "valid integer" in message


def test_negative_lr_names_field_value_and_bound() -> None:
    message = config_error({**base(), "train": {"lr": -0.1}})
    assert "train.lr" in message and "-0.1" in message and "greater than 0" in message


def test_unknown_task_kind_suggests_nearest() -> None:
    data = base()
    data["tasks"][1]["kind"] = "clasification"
    message = config_error(data)
    assert "tasks.1.kind" in message and "'clasification'" in message
    assert "Did you mean 'classification'" in message
    assert "regression" in message  # valid choices are listed


@pytest.mark.parametrize(
    ("section", "value", "field", "nearest"),
    [
        ("balancer", "pcgradd", "balancer.name", "pcgrad"),
        ("sampler", "proportionl", "sampler.name", "proportional"),
        ("model", {"architecture": "mmo"}, "model.architecture.name", "mmoe"),
        ("model", {"architecture": {"name": "hard_shareing"}}, "model.architecture.name",
         "hard_sharing"),
    ],
)
def test_unknown_method_names_suggest_nearest(
    section: str, value: Any, field: str, nearest: str
) -> None:
    message = config_error({**base(), section: value})
    bad = value if isinstance(value, str) else value["architecture"]
    bad = bad if isinstance(bad, str) else bad["name"]
    assert field in message and repr(bad) in message
    assert f"Did you mean {nearest!r}" in message


def test_duplicate_task_names() -> None:
    data = base()
    data["tasks"][1]["name"] = "sentiment"
    message = config_error(data)
    assert "tasks" in message and "unique" in message and "'sentiment'" in message
    assert "Rename" in message


def test_task_without_data_and_no_shared_data(tmp_path: Path) -> None:
    data = base()
    del data["data"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "tasks.0 (sentiment)" in message and "no `data`" in message
    assert "data:" in message  # says where to add it
    load_config(data)  # in Python the rows may come later: Trainer(config, data=...)


def test_no_tasks_and_no_suite() -> None:
    message = config_error({"train": {"lr": 0.1}})
    assert "tasks" in message and "suite" in message


def test_gradient_balancer_with_one_task_sampler_is_rejected() -> None:
    needs_all = [n for n in BALANCERS.names() if BALANCERS.get(n).needs_all_tasks]
    one_task = [n for n in SAMPLERS.names() if not SAMPLERS.get(n).feeds_all_tasks]
    assert "pcgrad" in needs_all and "proportional" in one_task
    message = config_error({**base(), "balancer": "pcgrad", "sampler": "proportional"})
    assert "'pcgrad'" in message and "'proportional'" in message
    assert "use sampler 'all'" in message and "'ew'" in message
    # a loss weighting that does not need every task is fine with one task per step
    assert load_config({**base(), "balancer": "ew", "sampler": "proportional"})


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    message = config_error(missing)
    assert str(missing) in message and "does not exist" in message


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("tasks: [unclosed\n")
    message = config_error(path)
    assert str(path) in message and "not valid YAML" in message


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- train\n- tasks\n")
    message = config_error(path)
    assert str(path) in message and "mapping" in message


def test_data_settings_typo_is_rejected_naming_path() -> None:
    message = config_error({**base(), "data": {"pth": "rows.csv"}})
    assert "data.pth" in message and "Did you mean 'path'?" in message
    data = base()
    data["tasks"][0]["data"] = {"pth": "own.csv"}
    message = config_error(data)
    assert "tasks.0.data.pth" in message and "Did you mean 'path'?" in message


def test_data_spec_rejects_unknown_split() -> None:
    message = config_error({**base(), "data": {"path": "x", "max_rows": {"trian": 5}}})
    assert "data.max_rows" in message and "'trian'" in message and "train" in message


# ------------------------------------------------------------------------ overrides


def test_override_nested_keys_parsed_as_yaml() -> None:
    cfg = load_config(base(), overrides=["train.lr=3e-4", "train.max_steps=7",
                                         "train.grad_clip=null", "name=run1"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.train.max_steps == 7 and cfg.train.grad_clip is None
    assert cfg.name == "run1"


def test_override_method_sections() -> None:
    cfg = load_config({**base(), "sampler": "temperature"},
                      overrides=["balancer=uw", "sampler.temperature=3"])
    assert cfg.balancer.name == "uw"
    assert cfg.sampler.name == "temperature" and cfg.sampler.options == {"temperature": 3}
    cfg = load_config(base(), overrides=["model.architecture=mmoe",
                                         "model.architecture.num_experts=4"])
    assert cfg.model.architecture.name == "mmoe"
    assert cfg.model.architecture.options == {"num_experts": 4}
    cfg = load_config(base(), overrides=["balancer=cagrad", "balancer.c=1e-1"])
    assert cfg.balancer.options == {"c": pytest.approx(0.1)}


def test_override_list_item_by_index() -> None:
    cfg = load_config(base(), overrides=["tasks.1.metric=macro_f1"])
    assert cfg.tasks[1].metric == "macro_f1" and cfg.tasks[0].metric is None
    cfg = load_config(base(), overrides=["tasks.0.input=[a, b]"])
    assert cfg.tasks[0].input_columns == ["a", "b"]


def test_override_from_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("data: {path: rows.csv}\n"
                    "tasks: [{name: a, kind: regression, input: x, label: y}]\n")
    cfg = load_config(path, overrides=["train.seed=5", "tasks.0.metric=mse"])
    assert cfg.train.seed == 5 and cfg.tasks[0].metric == "mse"


def test_overrides_do_not_change_the_callers_dict() -> None:
    data = {**base(), "sampler": "temperature"}
    before = copy.deepcopy(data)
    load_config(data, overrides=["tasks.0.metric=mcc", "data.max_rows.train=3",
                                 "sampler.temperature=2"])
    assert data == before
    out = apply_overrides(data, ["train.lr=0.5"])
    assert out["train"] == {"lr": 0.5} and "train" not in data


def test_override_value_is_validated() -> None:
    message = config_error(base(), overrides=["train.batch_size=-2"])
    assert "train.batch_size" in message and "-2" in message


@pytest.mark.parametrize("item", ["train.lr", "balancer"])
def test_malformed_override_without_equals(item: str) -> None:
    message = config_error(base(), overrides=[item])
    assert repr(item) in message and "KEY=VALUE" in message


@pytest.mark.parametrize("item", ["tasks.5.metric=mcc", "tasks.first.metric=mcc"])
def test_override_bad_list_index(item: str) -> None:
    message = config_error(base(), overrides=[item])
    assert repr(item) in message and "indexed from 0" in message


def test_override_with_invalid_yaml_value() -> None:
    message = config_error(base(), overrides=["tasks=[unclosed"])
    assert "tasks=[unclosed" in message and "not valid YAML" in message
