"""Each catalog declaration reads files written in its hub dataset's layout: nested fields
mapped, hidden test labels never read (test is the official validation set, validation is
carved and recorded), extra splits kept, labels encoded by the task's kind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polytask.config import load_config
from polytask.tasks import catalog
from polytask.tasks.data import Source, check_columns, load_source
from polytask.tasks.kinds import TASK_KINDS
from polytask.tasks.spec import Task
from polytask.train.trainer import Trainer
from tests.tasks.catalog.hub_fixtures import LAYOUTS, write_hub_files


def _load(name: str, folder: Path) -> tuple[Task, Source]:
    task = catalog.catalog_task({"catalog": name, "data_files": write_hub_files(name, folder)})
    return task, load_source(task.name, task.data, 0, 0.2, 0.2, f"tasks.{task.name}.data")


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_each_declaration_loads_its_hub_layout(name: str, tmp_path: Path) -> None:
    task, source = _load(name, tmp_path)
    check_columns(task, source)
    item = catalog.entry(name)
    assert set(source.frames) == {"train", "validation", "test", *item.extra_splits}
    for frame in source.frames.values():  # only the declared columns, never a hidden label
        assert set(frame.columns) == {*item.columns, *item.compose}
        if "label" in frame.columns:
            assert (frame["label"] != -1).all()
    carved = [s for s in ("validation", "test") if s not in item.splits]
    assert source.carved == carved
    kind = TASK_KINDS.get(task.kind)(task)
    if not kind.owns_inputs:  # the others need a tokenizer: see the training test
        kind.fit(source.frames["train"])
        for split, frame in source.frames.items():
            assert len(kind.encode(frame, split)) == len(frame)


def test_the_official_validation_set_is_the_test_split(tmp_path: Path) -> None:
    _, source = _load("glue/mnli", tmp_path)
    assert len(source.frames["test"]) == 8  # validation_matched's rows, all of them
    assert len(source.frames["test_mismatched"]) == 8
    assert len(source.frames["train"]) + len(source.frames["validation"]) == 24


def test_nested_answers_and_composed_columns(tmp_path: Path) -> None:
    _, squad = _load("squad_v2", tmp_path / "v2")
    train = squad.frames["train"].sort_values("question")
    answers = dict(zip(train["question"], zip(train["answer_text"], train["answer_start"],
                                              strict=True), strict=True))
    assert answers["how was the movie 0"] == (["good", "good"], [14, 14])
    assert answers["how was the movie 3"] == ([], [])  # unanswerable
    _, copa = _load("superglue/copa", tmp_path / "copa")
    assert set(copa.frames["test"]["context"]) == {
        "the glass fell 0 What was the cause of this?",
        "the glass fell 1 What was the effect of this?", "the glass fell 2 What was the cause "
        "of this?", "the glass fell 3 What was the effect of this?", *{
            f"the glass fell {i} What was the {['cause', 'effect'][i % 2]} of this?"
            for i in range(8)}}
    _, conll = _load("conll2003", tmp_path / "conll")
    kind = TASK_KINDS.get("token_classification")(catalog.catalog_task("conll2003"))
    kind.fit(conll.frames["train"])
    assert kind.label_names[:3] == ["O", "B-PER", "I-PER"]


def test_a_run_on_catalog_tasks_reports_extra_splits_and_the_glue_average(
        tmp_path: Path, tiny_bert: Path) -> None:
    tasks = [{"catalog": name, "data_files": write_hub_files(name, tmp_path / "data")}
             for name in ("glue/rte", "glue/stsb", "glue/mnli", "squad", "conll2003")]
    tasks[3]["options"] = {"stride": 8}  # a per-run override of the kind's options
    config = load_config({
        "tasks": tasks, "sampler": "round_robin",
        "model": {"backbone": {"type": "hf", "name": str(tiny_bert), "max_length": 32}},
        "train": {"max_steps": 5, "batch_size": 4, "eval_every": 5, "progress": False,
                  "callbacks": []},
        "baselines": "none",
    })
    results = Trainer(config, tmp_path / "run").fit()
    assert set(results["tasks"]) == {"rte", "stsb", "mnli", "squad", "conll2003"}
    assert set(results["extra_splits"]) == {"mnli"}
    mismatched = results["extra_splits"]["mnli"]["test_mismatched"]
    glue = results["benchmarks"]["glue"]
    stsb = results["tasks"]["stsb"]["metrics"]
    assert glue["parts"] == pytest.approx({
        "glue/rte": results["tasks"]["rte"]["metrics"]["accuracy"],
        "glue/stsb": (stsb["pearson"] + stsb["spearman"]) / 2,
        "glue/mnli": results["tasks"]["mnli"]["metrics"]["accuracy"],
        "glue/mnli:test_mismatched": mismatched["accuracy"]})
    assert glue["score"] == pytest.approx(sum(glue["parts"].values()) / 4)
    assert not glue["complete"] and "glue/cola" in glue["missing"]
    record = json.loads((tmp_path / "run" / "splits.json").read_text())["sources"]["rte"]
    assert record["carved"] == ["validation"] and record["rows"]["test"] == 8
