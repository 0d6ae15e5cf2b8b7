"""The cross-task generalisation protocol (`split: {train_tasks, eval_tasks}`): held-out
tasks are never trained on, are scored zero-shot after training and reported apart; a
held-out task whose head is its own is refused before any work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from polytask import load
from polytask.config import load_config
from polytask.errors import ConfigError
from polytask.pipeline import resolve
from polytask.train.baselines import cached_baselines
from polytask.train.trainer import Trainer
from tests.generative_models import save_tiny_llama, sentiment_rows


def _generation(name: str, prompt: str, target: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": "generation", "input": "text", "label": "label",
            "options": {"prompt": prompt, "target": target, **extra},
            "data": sentiment_rows(40, seed=len(name))}


def _config(model: Path, split: dict[str, Any], tasks: list[dict[str, Any]] | None = None,
            ) -> Any:
    return load_config({
        "tasks": tasks or [
            _generation("sentiment", "review: {text} sentiment:", " {label}",
                        verbalizer={"pos": "good", "neg": "bad"}),
            _generation("summary", "summarize: {text}", " {summary}"),
            _generation("keyword", "keyword of: {text}", " {summary}"),
        ],
        "split": split, "sampler": "round_robin",
        "model": {"backbone": {"type": "hf", "name": str(model), "max_length": 48}},
        "train": {"max_steps": 4, "batch_size": 4, "eval_every": 4, "log_every": 1,
                  "progress": False, "callbacks": [], "lr": 1e-2},
        "baselines": "none",
    })


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


def test_held_out_tasks_are_scored_zero_shot_and_reported_apart(tmp_path: Path,
                                                                llama: Path) -> None:
    config = _config(llama, {"train_tasks": ["sentiment", "summary"],
                             "eval_tasks": ["keyword"]})
    results = Trainer(config, tmp_path / "run").fit()
    assert set(results["tasks"]) == {"sentiment", "summary"}
    held = results["held_out"]["keyword"]
    assert held["metric"] == "rougeL" and held["higher_is_better"]
    assert 0.0 <= held["value"] <= 1.0 and held["value"] == held["metrics"]["rougeL"]
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    trained = {key.split("/", 1)[1] for record in logged for key in record
               if key.startswith("loss/")}
    assert trained == {"sentiment", "summary"}  # never a training loss of the held-out task
    meta = json.loads((tmp_path / "run" / "model" / "meta.json").read_text())
    assert [t["name"] for t in meta["tasks"]] == ["sentiment", "summary", "keyword"]
    assert set(cached_baselines(config)) == {"sentiment", "summary"}
    predicted = load(tmp_path / "run").predict(sentiment_rows(2)[["text"]], tasks=["keyword"])
    assert len(predicted["keyword"]) == 2 and all(isinstance(v, str)
                                                  for v in predicted["keyword"])


@pytest.mark.parametrize(("split", "message"), [
    ({"train_tasks": ["sentiment"], "eval_tasks": ["keyword"]},
     r"split: task\(s\) \['summary'\] are in neither train_tasks nor eval_tasks"),
    ({"train_tasks": ["sentiment", "summary"], "eval_tasks": ["keywords"]},
     r"split: unknown task\(s\) \['keywords'\]"),
])
def test_the_split_must_list_every_task_once(split: dict[str, Any], message: str,
                                             tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve(_config(tmp_path, split))


def test_a_task_in_both_lists_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"split: \['summary'\] listed in both"):
        _config(tmp_path, {"train_tasks": ["summary"], "eval_tasks": ["summary", "keyword"]})


def test_a_held_out_task_with_a_private_head_is_refused(tmp_path: Path) -> None:
    rows = sentiment_rows(10)
    tasks = [_generation("summary", "summarize: {text}", " {summary}"),
             {"name": "polarity", "kind": "classification", "input": "text", "label": "label",
              "data": rows}]
    config = _config(tmp_path, {"train_tasks": ["summary"], "eval_tasks": ["polarity"]}, tasks)
    with pytest.raises(ConfigError, match=r"split.eval_tasks: task 'polarity' is of kind "
                                          r"'classification', whose head is the task's own.*"
                                          r"generation"):
        resolve(config)
