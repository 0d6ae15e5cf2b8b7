"""`polytask merge`: experts from one base, hyperparameters chosen on validation, the
leaderboard rows and files, and bad input refused before anything is written."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
from rich.console import Console
from torch import Tensor
from typer.testing import CliRunner

from polytask.cli import app
from polytask.config import RunConfig, load_config
from polytask.errors import ConfigError
from polytask.merge import regime
from polytask.merge.base import MergeData, Merger, StateDict
from polytask.merge.regime import MergeOutcome, run_merge
from polytask.registry import Registry


def _row(outcome: MergeOutcome, name: str) -> dict[str, Any]:
    return next(r for r in outcome.results["rows"] if r["name"] == name)


def test_merging_two_experts_keeps_both_tasks_well_above_chance(
        toy_merge: tuple[MergeOutcome, Path]) -> None:
    outcome, _ = toy_merge
    for name in ("task_arithmetic", "ties"):
        row = _row(outcome, name)
        assert row["tasks"]["up"] > 0.7  # chance 0.5
        assert row["tasks"]["level"] > 0.55  # 3 classes; the largest holds ~0.38


def test_rows_files_and_the_delta_m_baseline(toy_merge: tuple[MergeOutcome, Path]) -> None:
    outcome, out = toy_merge
    results = outcome.results
    assert [r["name"] for r in results["rows"]] == ["experts", "task_arithmetic", "ties",
                                                     "surgery", "mix", "frozen"]
    assert _row(outcome, "experts")["delta_m"] == 0.0
    assert results["baseline"] == "experts" and "against the experts" in results["baseline_note"]
    ties = _row(outcome, "ties")
    assert set(ties["hyperparameters"]) == {"density", "scale"}
    assert ties["seconds"] is not None and ties["run_dir"] == "merged/ties"
    assert _row(outcome, "surgery")["inputs"] == "validation"
    assert len(results["sweeps"]["task_arithmetic"]) == 4
    cosine = results["task_vector_cosine"]
    assert cosine["tasks"] == ["up", "level"]
    assert cosine["matrix"][0][0] == pytest.approx(1.0)
    assert cosine["matrix"][0][1] == pytest.approx(cosine["matrix"][1][0])
    for name in ("results.json", "leaderboard.md", "leaderboard.json", "report.html",
                 "merge_sweep.png", "task_vector_cosine.png", "base/backbone.safetensors"):
        assert (out / name).exists(), name
    assert "| task_arithmetic | scale=" in (out / "leaderboard.md").read_text()
    assert json.loads((out / "results.json").read_text())["regime"] == "merge"


class Scripted(Merger):
    """Returns the base; the test scores its two grid points by split (see below)."""

    grid: ClassVar[dict[str, list[Any]]] = {"point": ["best_on_validation", "best_on_test"]}
    made: ClassVar[dict[int, str]] = {}

    def __init__(self, point: str = "best_on_validation") -> None:
        super().__init__()
        self.point = point

    def _merge(self, base: StateDict, experts: Mapping[str, StateDict],
               data: MergeData | None) -> StateDict:
        merged = {k: v.clone() for k, v in base.items()}
        Scripted.made[id(merged)] = self.point
        return merged


SCORES = {("validation", "best_on_validation"): 0.9, ("validation", "best_on_test"): 0.6,
          ("test", "best_on_validation"): 0.55, ("test", "best_on_test"): 0.99}


def test_hyperparameters_are_chosen_on_validation_never_on_test(
        toy_config: RunConfig, toy_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry: Registry[type[Merger]] = Registry("merging method")
    registry.register("scripted", paper="a test double")(Scripted)
    monkeypatch.setattr(regime, "MERGERS", registry)

    def scored(experts: Any, merged: Mapping[str, Tensor], split: str) -> dict[str, Any]:
        value = SCORES[(split, Scripted.made[id(merged)])]
        return {t: {"accuracy": value} for t in experts.tasks}

    monkeypatch.setattr(regime, "evaluate_merged", scored)
    outcome = run_merge(toy_config, ["scripted"], toy_files["folder"] / "scripted",
                        console=Console(quiet=True), references=False)
    row = _row(outcome, "scripted")
    assert row["hyperparameters"] == {"point": "best_on_validation"}
    assert row["tasks"] == {"up": 0.55, "level": 0.55}  # its test value, though worse
    assert [p["hyperparameters"]["point"] for p in outcome.results["sweeps"]["scripted"]] == \
        ["best_on_validation", "best_on_test"]


def test_a_fixed_option_is_not_searched(toy_config: RunConfig,
                                        toy_files: dict[str, Path]) -> None:
    outcome = run_merge(toy_config, "task_arithmetic", toy_files["folder"] / "fixed",
                        console=Console(quiet=True), references=False,
                        options={"task_arithmetic": {"scale": 0.4}})
    assert _row(outcome, "task_arithmetic")["hyperparameters"] == {"scale": 0.4}
    assert len(outcome.results["sweeps"]["task_arithmetic"]) == 1


def test_a_frozen_backbone_is_refused_before_anything_is_written(
        tiny_bert: Path, text_files: dict[str, Path], tmp_path: Path) -> None:
    config = load_config({
        "tasks": [{"name": "sentiment", "kind": "classification", "input": "sentence",
                   "label": "label", "data": {"path": str(text_files["sentiment"])}}],
        "model": {"backbone": {"type": "hf", "name": str(tiny_bert), "trainable_layers": 0}},
        "baselines_dir": str(tmp_path / "baselines")})
    with pytest.raises(ConfigError, match="every expert's backbone equals the pretrained one"):
        run_merge(config, "average", tmp_path / "out", console=Console(quiet=True))
    assert not (tmp_path / "out").exists() and not (tmp_path / "baselines").exists()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"methods": "tyes"}, "Did you mean .ties"),
    ({"methods": "ties", "inputs": "train"}, "--inputs"),
    ({"methods": "ties", "options": {"dare": {"density": 0.2}}}, "not among the methods"),
    ({"methods": "ties", "options": {"ties": {"density": 2.0}}}, "density"),
    ({"methods": "ties", "rows": 0}, "--rows"),
])
def test_bad_input_is_refused_and_writes_nothing(toy_config: RunConfig, tmp_path: Path,
                                                 kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_merge(toy_config, out=tmp_path / "out", console=Console(quiet=True), **kwargs)
    assert not (tmp_path / "out").exists()


def test_a_foreign_folder_is_not_written_into(toy_config: RunConfig, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not written by polytask merge"):
        run_merge(toy_config, "ties", tmp_path, console=Console(quiet=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_the_cli_prints_the_leaderboard(toy_yaml: Path, tmp_path: Path) -> None:
    path = toy_yaml
    done = CliRunner().invoke(app, ["merge", str(path), "--methods", "average", "--out",
                                    str(tmp_path / "out"), "--no-references"])
    assert done.exit_code == 0, done.output
    assert "average" in done.output and "Δm%" in done.output
    bad = CliRunner().invoke(app, ["merge", str(path), "--methods", "averag", "--out",
                                   str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "Did you mean" in bad.output


def test_the_frozen_reference_trains_its_heads_at_the_frozen_learning_rate(
        toy_merge: tuple[MergeOutcome, Path], toy_config: RunConfig) -> None:
    _, out = toy_merge
    saved = load_config(out / "frozen" / "config.yaml")
    assert saved.train.lr == regime.FROZEN_LR != toy_config.train.lr
    assert saved.train.max_steps == toy_config.train.max_steps


def test_a_frozen_learning_rate_that_is_not_positive_is_refused(
        toy_config: RunConfig, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--frozen-lr"):
        run_merge(toy_config, ["average"], tmp_path / "out", frozen_lr=0.0,
                  console=Console(quiet=True))
    assert not (tmp_path / "out").exists()
