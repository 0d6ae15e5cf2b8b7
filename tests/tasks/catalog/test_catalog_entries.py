"""The built-in catalog: every entry validates and builds its task and kind (and each cast);
declarations are data only: bad paths, templates and column references are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from polytask.config import load_config
from polytask.errors import ConfigError
from polytask.tasks import catalog
from polytask.tasks.catalog.schema import CatalogEntry, CatalogFile
from polytask.tasks.fields import parse_field_path
from polytask.tasks.kinds import TASK_KINDS
from polytask.tasks.spec import DataSpec

MODEL = {"backbone": {"type": "hf", "name": "some-encoder"}}  # never loaded: config only
EXPECTED = {
    "glue/cola": "mcc", "glue/sst2": "accuracy", "glue/mrpc": "f1_accuracy",
    "glue/qqp": "f1_accuracy", "glue/stsb": "pearson_spearman", "glue/mnli": "accuracy",
    "glue/qnli": "accuracy", "glue/rte": "accuracy", "glue/wnli": "accuracy",
    "superglue/boolq": "accuracy", "superglue/cb": "f1_accuracy", "superglue/copa": "accuracy",
    "superglue/rte": "accuracy", "squad": "f1", "squad_v2": "f1", "conll2003": "entity_f1",
}


def test_the_catalog_holds_the_benchmarks_with_their_official_metrics() -> None:
    assert {name: item.metric for name, item in catalog.entries().items()} == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_entry_builds_its_task_and_kind_and_each_cast(name: str) -> None:
    task = catalog.catalog_task(name)
    assert task.catalog_entry == name and task.name == name.rsplit("/", 1)[-1]
    assert isinstance(task.data, DataSpec) and task.data.hub
    kind = TASK_KINDS.get(task.kind)(task)
    assert kind.metric == EXPECTED[name]
    for cast in catalog.entry(name).casts:
        cast_task = catalog.catalog_task({"catalog": name, "kind": cast})
        assert TASK_KINDS.get(cast)(cast_task).metric == EXPECTED[name]


def test_hidden_test_labels_are_never_read_and_validation_is_carved() -> None:
    data = catalog.catalog_task("glue/rte").data
    assert data.split_names == {"train": "train", "test": "validation"}
    assert data.carve == ["validation"]
    mnli = catalog.catalog_task("glue/mnli").data
    assert mnli.extra_splits == {"test_mismatched": "validation_mismatched"}
    assert catalog.catalog_task("conll2003").data.carve == []


def test_overrides_of_a_catalog_task() -> None:
    task = catalog.catalog_task({"catalog": "glue/rte", "name": "my_rte", "max_rows": {
        "train": 5}, "data_files": {"train": "t.jsonl"}, "metric": "macro_f1"})
    assert (task.name, task.metric) == ("my_rte", "macro_f1")
    assert task.data.files == {"train": "t.jsonl"} and task.data.max_rows == {"train": 5}
    assert not task.data.hub
    with pytest.raises(ConfigError, match=r"kind 'generation' is not a cast.*casts: none"):
        catalog.catalog_task({"catalog": "squad", "kind": "generation"})


def _entry(**changes: Any) -> dict[str, Any]:
    base = {"description": "d", "kind": "classification", "source": {"hub": "x/y"},
            "columns": {"text": "text", "label": "label"}, "input": "text", "label": "label"}
    return {**base, **changes}


@pytest.mark.parametrize(("changes", "message"), [
    ({"columns": {"text": "__import__('os')", "label": "label"}}, "not a field path"),
    ({"columns": {"text": "a[-1]", "label": "label"}}, "not a field path"),
    ({"columns": {"text": "a[0:2]", "label": "label"}}, "not a field path"),
    ({"input": "sentence"}, "input: column 'sentence' is neither in `columns`"),
    ({"compose": {"ctx": "{text} {missing}"}}, r"compose.ctx: \{missing\} is not a column"),
    ({"compose": {"ctx": "{text.__class__}"}}, "not a plain column placeholder"),
    ({"casts": {"generation": {"prompt": "rte: {premise}"}}},
     r"casts.generation.prompt: \{premise\} is not a column"),
    ({"splits": {"train": "train", "test": "test"}, "hidden_labels": ["test"]},
     "hold hidden labels"),
    ({"splits": {"test": "validation"}}, "map polytask's train split"),
    ({"metrics": "accuracy"}, "Extra inputs are not permitted"),
])
def test_a_bad_declaration_names_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CatalogEntry.model_validate(_entry(**changes))


def test_a_benchmark_score_must_name_an_entry_and_its_split() -> None:
    for score, message in (({"task": "nope", "metrics": ["accuracy"]}, "not in this file"),
                           ({"task": "t", "metrics": ["accuracy"], "split": "x"},
                            "no extra split 'x'")):
        with pytest.raises(ValidationError, match=message):
            CatalogFile.model_validate({"group": "g", "description": "d", "tasks": {
                "t": _entry()}, "benchmark": {"description": "d", "scores": [score]}})


def test_field_paths_parse_keys_and_indices_only() -> None:
    assert parse_field_path("answers.text[0]", "x") == ("answers", "text", 0)
    assert parse_field_path("a[1][2].b", "x") == ("a", 1, 2, "b")
    for bad in ("", "a.", ".a", "a[x]", "a]", "a b", "a;b", "a()"):
        with pytest.raises(ValueError, match="not a field path"):
            parse_field_path(bad, "x")


def test_an_unknown_catalog_name_in_a_config_says_did_you_mean() -> None:
    with pytest.raises(ConfigError, match=r"tasks: tasks.1: no catalog task 'glue/rtee'\. "
                                          r"Did you mean 'glue/rte'"):
        load_config({"tasks": ["glue/sst2", "glue/rtee"],
                     "model": MODEL})
    with pytest.raises(ConfigError, match=r"Did you mean 'squad_v2'"):
        load_config({"tasks": ["squadv2"], "model": MODEL})


def test_a_bad_override_key_lists_the_keys() -> None:
    with pytest.raises(ConfigError, match=r"tasks.0 .*max_row: Extra inputs.*keys of a "
                                          r"catalog task are: catalog, name"):
        load_config({"tasks": [{"catalog": "glue/rte", "max_row": {"train": 3}}],
                     "model": MODEL})


def test_config_strings_and_mappings_resolve_through_the_catalog() -> None:
    config = load_config({"tasks": ["glue/rte", {"catalog": "superglue/rte", "name": "sg_rte"},
                                    {"name": "own", "kind": "regression", "input": "x",
                                     "label": "y", "data": {"path": "a.csv"}}],
                          "model": MODEL})
    assert [(t.name, t.catalog_entry) for t in config.tasks] == [
        ("rte", "glue/rte"), ("sg_rte", "superglue/rte"), ("own", None)]
    again = load_config(config.dump())  # a run's saved config reloads as plain tasks
    assert [t.catalog_entry for t in again.tasks] == ["glue/rte", "superglue/rte", None]


def test_relative_data_files_are_read_against_the_config_file(tmp_path: Path) -> None:
    config_file = tmp_path / "run.yaml"
    config_file.write_text("tasks:\n  - {catalog: glue/rte, data_files: {train: rte.jsonl}}\n"
                           "model: {backbone: {type: hf, name: some-encoder}}\n")
    task = load_config(config_file).tasks[0]
    assert task.data.files == {"train": str(tmp_path / "rte.jsonl")}
