"""End to end through the CLI: both data shapes, every task kind, eval and predict."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from polytask.cli import app
from tests.conftest import tabular_config

runner = CliRunner()


def _write(path: Path, config: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def _text_config(tiny_bert: Path, files: dict[str, Path]) -> dict[str, object]:
    return {
        "tasks": [
            {"name": "sentiment", "kind": "classification", "input": "sentence",
             "label": "label", "data": {"path": str(files["sentiment"])}},
            {"name": "topic", "kind": "classification", "input": "text", "label": "topic",
             "metric": "macro_f1", "data": {"path": str(files["topic"])}},
            {"name": "ner", "kind": "token_classification", "input": "tokens",
             "label": "tags", "data": {"path": str(files["ner"])}},
        ],
        "model": {"backbone": {"type": "hf", "name": str(tiny_bert), "max_length": 24}},
        "sampler": "round_robin",
        "train": {"max_steps": 12, "batch_size": 8, "eval_every": 6, "progress": False,
                  "lr": 5e-3},
    }


def _check_run_dir(run: Path, tasks: list[str]) -> dict[str, object]:
    for name in ("config.yaml", "metrics.jsonl", "results.json", "splits.json",
                 "model/model.safetensors", "model/meta.json"):
        assert (run / name).exists(), name
    assert list((run / "checkpoints").iterdir())
    results = json.loads((run / "results.json").read_text())
    assert list(results["tasks"]) == tasks
    for entry in results["tasks"].values():
        assert set(entry) >= {"metric", "higher_is_better", "value", "baseline"}
        assert isinstance(entry["value"], float)
    assert set(results) >= {"delta_m", "seed", "steps", "sampler", "balancer", "architecture"}
    return results


def test_one_dataset_per_task_on_a_text_encoder(tmp_path: Path, tiny_bert: Path,
                                                 text_files: dict[str, Path]) -> None:
    config = _write(tmp_path / "text.yaml", _text_config(tiny_bert, text_files))
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(config), "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    results = _check_run_dir(run, ["sentiment", "topic", "ner"])
    assert results["sampler"] == "round_robin" and results["steps"] == 12
    assert "entity_f1" in results["tasks"]["ner"]["metrics"]

    evaluated = runner.invoke(app, ["eval", str(run), "--split", "validation"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "entity_f1" in evaluated.output

    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"tokens": ["bob", "went", "to", "rome"]}\n')
    predicted = runner.invoke(app, ["predict", str(run), "--task", "ner", "--input", str(rows)])
    assert predicted.exit_code == 0, predicted.output
    tags = json.loads(predicted.stdout.splitlines()[0])["ner"]
    assert len(tags) == 4 and set(tags) <= {"B-PER", "B-LOC", "O"}


def test_one_shared_dataset_with_missing_labels(tmp_path: Path, tabular_file: Path) -> None:
    config = _write(tmp_path / "tab.yaml", tabular_config(tabular_file))
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(config), "--run-dir", str(run),
                                 "--set", "balancer=uw"])
    assert result.exit_code == 0, result.output
    results = _check_run_dir(run, ["up", "size", "flags"])
    assert results["balancer"] == "uw"
    assert results["tasks"]["up"]["value"] > 0.7  # learnable: a linear rule of the inputs
    assert results["tasks"]["size"]["metrics"]["pearson"] > 0.8
    splits = json.loads((run / "splits.json").read_text())
    assert splits["sources"]["shared"]["carved"] == ["test", "validation"]
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"loss/up", "loss/size", "loss/flags", "weight/up", "lr"} <= set(log[0])

    rows = tmp_path / "rows.csv"
    rows.write_text("a,b,c,colour\n2.0,1.0,0.0,red\n-2.0,-1.0,0.0,purple\n")
    predicted = runner.invoke(app, ["predict", str(run), "--task", "up", "--input", str(rows)])
    assert predicted.exit_code == 0, predicted.output
    assert [json.loads(line)["up"] for line in predicted.stdout.splitlines()] == ["yes", "no"]


def test_baselines_auto_gives_delta_m_and_is_cached(tmp_path: Path, tabular_file: Path) -> None:
    config = tabular_config(tabular_file, max_steps=10)
    config["baselines"] = "auto"
    config["baselines_dir"] = str(tmp_path / "baselines")
    path = _write(tmp_path / "tab.yaml", config)
    first = runner.invoke(app, ["train", str(path), "--run-dir", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert all(t["baseline"] is not None for t in results["tasks"].values())
    assert isinstance(results["delta_m"], float)
    printed = " ".join(first.output.split())
    assert "Δm% =" in printed and "positive = multi-task is better" in printed
    baselines = sorted((tmp_path / "baselines").iterdir())
    assert len(baselines) == 3
    second = runner.invoke(app, ["train", str(path), "--run-dir", str(tmp_path / "b"),
                                 "--set", "balancer=pcgrad"])
    assert second.exit_code == 0, second.output
    assert sorted((tmp_path / "baselines").iterdir()) == baselines  # reused, not retrained
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    log = [json.loads(line) for line in lines]
    cosines = [r for r in log if "cosine/up/size" in r]
    assert cosines and all(-1.0 <= r["cosine/up/size"] <= 1.0 for r in cosines)
    again = json.loads((tmp_path / "b" / "results.json").read_text())
    assert [t["baseline"] for t in again["tasks"].values()] == [
        t["baseline"] for t in results["tasks"].values()]


def test_baseline_command_then_cached_lookup(tmp_path: Path, tabular_file: Path) -> None:
    config = tabular_config(tabular_file, max_steps=5)
    config["baselines_dir"] = str(tmp_path / "baselines")
    path = _write(tmp_path / "tab.yaml", config)
    result = runner.invoke(app, ["baseline", str(path)])
    assert result.exit_code == 0, result.output
    trained = runner.invoke(app, ["train", str(path), "--run-dir", str(tmp_path / "run")])
    assert trained.exit_code == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["delta_m"] is not None


def test_cli_errors_are_messages_not_tracebacks(tmp_path: Path, tabular_file: Path) -> None:
    config = tabular_config(tabular_file)
    config["tasks"][0]["label"] = "upp"  # type: ignore[index]
    path = _write(tmp_path / "bad.yaml", config)
    result = runner.invoke(app, ["train", str(path), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2
    printed = " ".join(result.output.split())
    assert "tasks.up.label: column 'upp'" in printed and "Did you mean 'up'" in printed
    assert "Traceback" not in result.output
    missing = runner.invoke(app, ["train", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "does not exist" in " ".join(missing.output.split())


def test_methods_lists_every_family_with_papers() -> None:
    result = runner.invoke(app, ["methods", "--json"])
    assert result.exit_code == 0
    entries = json.loads(result.output)
    families = {e["family"] for e in entries}
    assert {"sampler", "balancer", "architecture", "task kind"} <= families
    names = {e["name"] for e in entries}
    assert {"all", "temperature", "annealed", "ew", "uw", "pcgrad", "hard_sharing"} <= names
    assert all(e["paper"] for e in entries)


def test_balancer_wrappers_work_through_the_trainer(tmp_path: Path, tabular_file: Path) -> None:
    """Wrappers are hyperparameters of the balancer section: per-task SAM gets the trainer's
    closure, representation-level MGDA gets the shared features."""
    for i, balancer in enumerate(["{name: pcgrad, sam_rho: 0.05}",
                                  "{name: mgda, representation: true}",
                                  "{name: nash_mtl, update_every: 3}"]):
        config = _write(tmp_path / f"c{i}.yaml", tabular_config(tabular_file, max_steps=12))
        result = runner.invoke(app, ["train", str(config), "--run-dir", str(tmp_path / f"r{i}"),
                                     "--set", f"balancer={balancer}"])
        assert result.exit_code == 0, result.output
        results = json.loads((tmp_path / f"r{i}" / "results.json").read_text())
        assert all(isinstance(t["value"], float) for t in results["tasks"].values())


def test_bad_balancer_hyperparameter_is_a_config_error(tmp_path: Path,
                                                       tabular_file: Path) -> None:
    config = _write(tmp_path / "c.yaml", tabular_config(tabular_file))
    result = runner.invoke(app, ["train", str(config), "--run-dir", str(tmp_path / "r"),
                                 "--set", "balancer={name: cagrad, cc: 0.4}"])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "balancer.cc: 'cagrad' has no option 'cc'. Did you mean 'c'?" in message
    assert not (tmp_path / "r").exists()  # refused when the config loads, before any work
