"""`polytask affinity`: every file it promises (matrices, groups with ARI, per-group configs
that train, the report, source rankings), its refusals; and `polytask bench --grouping`: the
grouped / together / single-task leaderboard, caching, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from polytask.affinity.run import true_partition
from polytask.bench import bench_config, read_grouping
from polytask.cli import app
from polytask.config import load_config
from polytask.errors import ConfigError
from polytask.train.trainer import Trainer

runner = CliRunner()
#: A small planted suite and short runs: the tests check the plumbing, not the recovery.
SMALL = ["--set", "suite.train_size=200", "--set", "suite.eval_size=100",
         "--set", "train.callbacks=[]"]
TASKS = [f"task{i}" for i in range(9)]


def _invoke(*args: str) -> Any:
    return runner.invoke(app, list(args))


def test_affinity_writes_every_file_and_each_group_config_trains(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = _invoke("affinity", "planted", "--methods", "grad_cosine,tag", "--groups", "3",
                     "--steps", "30", "--target", "task0", "--option", "tag.every=3", *SMALL)
    assert result.exit_code == 0, result.output
    out = tmp_path / "affinity" / "planted"  # the default folder
    matrices = json.loads((out / "affinity.json").read_text())["methods"]
    assert set(matrices) == {"grad_cosine", "tag"}
    for matrix in matrices.values():
        assert matrix["tasks"] == TASKS and len(matrix["values"]) == 9
        assert matrix["values"][0][0] is None and matrix["values"][0][1] is not None
        assert matrix["definition"] and matrix["direction"] and matrix["seconds"] > 0
    assert matrices["tag"]["details"]["every"] == 3  # --option reached the method

    groups = json.loads((out / "groups.json").read_text())
    assert groups["true_groups"] == [TASKS[0::3], TASKS[1::3], TASKS[2::3]]
    configs = sorted(p.name for p in (out / "configs").iterdir())
    for method, entry in groups["methods"].items():
        assert entry["search"] == "exact" and entry["seconds"] >= 0
        assert -1 <= entry["adjusted_rand_index"] <= 1
        assert sorted(entry["by_count"]) == ["1", "2", "3"]
        for k, partition in entry["by_count"].items():
            assert len(partition["groups"]) == int(k)
            assert sorted(t for g in partition["groups"] for t in g) == TASKS
            assert isinstance(partition["score"], float)
            assert "adjusted_rand_index" in partition
            assert [Path(c).name for c in partition["configs"]] == (
                [] if k == "1" else [f"{method}-k{k}-group{i}.yaml"
                                     for i in range(1, int(k) + 1)])
    assert len(configs) == 2 * (2 + 3)
    for name in configs:
        config = load_config(out / "configs" / name)
        method, k, group = name.removesuffix(".yaml").split("-")
        expected = groups["methods"][method]["by_count"][k[1:]]["groups"][int(group[5:]) - 1]
        assert config.only == expected and config.suite is not None
        assert config.train.max_steps == 30 and not config.train.callbacks

    ranked = json.loads((out / "sources-task0.json").read_text())
    assert ranked["target"] == "task0"
    for method in ("grad_cosine", "tag"):
        assert sorted(r["source"] for r in ranked["methods"][method]) == TASKS[1:]
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    assert (out / "affinity-tag.png").exists() and (out / "affinity-grad_cosine.png").exists()
    assert "ARI" in result.output and "source tasks for task0" in result.output

    trained = _invoke("train", str(out / "configs" / "tag-k3-group1.yaml"), "--set",
                      "train.max_steps=4", "--set", "baselines=none", "--run-dir", "run")
    assert trained.exit_code == 0, trained.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert list(results["tasks"]) == groups["methods"]["tag"]["by_count"]["3"]["groups"][0]


def test_overlapping_groups_have_no_rand_index(tmp_path: Path) -> None:
    result = _invoke("affinity", "planted", "--methods", "tag", "--overlap", "--groups", "2",
                     "--steps", "10", "--option", "tag.every=5", "--set", "suite.tasks=4",
                     "--set", "suite.groups=2", *SMALL, "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    groups = json.loads((tmp_path / "groups.json").read_text())
    assert groups["overlap"] is True and groups["adjusted_rand_index"] is None
    assert groups["true_groups"] == [["task0", "task2"], ["task1", "task3"]]
    entry = groups["methods"]["tag"]
    assert entry["adjusted_rand_index"] is None and "overlapping" in entry["search"]
    for partition in entry["by_count"].values():
        assert "adjusted_rand_index" not in partition
        assert {t for g in partition["groups"] for t in g} == {"task0", "task1", "task2",
                                                               "task3"}
    assert "ARI" not in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--methods", "tagg"], "unknown affinity method 'tagg'"),
    (["--target", "nope"], "--target 'nope' is not a task"),
    (["--option", "tag.nope=1"], "--option for tag"),
    (["--option", "taskweb.mode=joint"], "'taskweb' is not one of the --methods"),
    (["--option", "tag=1"], "expected METHOD.KEY=VALUE"),
    (["--groups", "0"], "--groups: must be at least 1"),
])
def test_affinity_refuses_bad_input_before_training(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str) -> None:
    monkeypatch.setattr(Trainer, "fit", lambda self: pytest.fail("trained"))
    result = _invoke("affinity", "planted", "--out", str(tmp_path / "out"), *args)
    assert result.exit_code == 2
    assert message in result.output


def test_true_partition_follows_only() -> None:
    config = bench_config("planted", overrides=["only=[task0,task1,task3]"])
    assert true_partition(config) == [["task0", "task3"], ["task1"]]
    assert true_partition(bench_config("yeast")) is None


def _groups_file(path: Path, methods: dict[str, list[list[str]]]) -> Path:
    document = {"methods": {m: {"by_count": {str(len(g)): {"groups": g}}}
                            for m, g in methods.items()}}
    path.write_text(json.dumps(document))
    return path


def test_bench_grouping_compares_grouped_together_and_single(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    groups = [["task0", "task2"], ["task1", "task3"]]
    grouping = _groups_file(tmp_path / "groups.json", {"a": groups, "b": groups})
    args = ["bench", "planted", "--grouping", str(grouping), "--seeds", "1", "--steps", "20",
            "--set", "suite.tasks=4", "--set", "suite.groups=2", *SMALL]
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "bench" / "planted-grouping"
    board = json.loads((out / "leaderboard.json").read_text())
    assert {m["balancer"] for m in board["methods"]} == {"grouped: a, b (k=2)", "together"}
    assert set(board["single_task"]) == {"task0", "task1", "task2", "task3"}
    for method in board["methods"]:
        assert method["delta_m"]["mean"] is not None
        assert set(method["task_change"]) == set(board["tasks"])
    grouped = next(m for m in board["methods"] if m["balancer"].startswith("grouped"))
    assert grouped["groups"] == groups
    assert grouped["runs"] == ["groups/task0+task2/seed0", "groups/task1+task3/seed0"]
    for run in grouped["runs"]:
        assert list(json.loads((out / run / "results.json").read_text())["tasks"]) in groups
    markdown = (out / "leaderboard.md").read_text()
    assert "| # | strategy |" in markdown and "| single-task | (baseline) |" in markdown
    assert "Relative change per task against single-task" in markdown
    assert (out / "report.html").exists()

    monkeypatch.setattr(Trainer, "fit", lambda self: pytest.fail(f"trained {self.run_dir}"))
    again = _invoke(*args)
    assert again.exit_code == 0, again.output
    assert json.loads((out / "leaderboard.json").read_text())["bench"]["last_invocation"][
        "cached"] == 3  # together + 2 groups


def test_overlapping_groups_serve_each_task_from_its_best_validation_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    grouping = _groups_file(tmp_path / "groups.json",
                            {"a": [["task0", "task1"], ["task1", "task2"]]})
    result = _invoke("bench", "planted", "--grouping", str(grouping), "--seeds", "1",
                     "--steps", "20", "--set", "suite.tasks=3", *SMALL, "--out", "b")
    assert result.exit_code == 0, result.output
    board = json.loads((tmp_path / "b" / "leaderboard.json").read_text())
    served = board["grouping"]["served_by"]["grouped: a (k=2)"]["0"]
    assert served["task0"] == "task0+task1" and served["task2"] == "task1+task2"
    validation = {
        folder: json.loads((tmp_path / "b" / "groups" / folder / "seed0" / "results.json")
                           .read_text())["validation"]["task1"]["accuracy"]
        for folder in ("task0+task1", "task1+task2")}
    assert validation[served["task1"]] == max(validation.values())


def test_read_grouping_refuses_files_for_other_tasks_and_unknown_choices(
        tmp_path: Path) -> None:
    grouping = _groups_file(tmp_path / "groups.json", {"a": [["x"], ["y"]]})
    with pytest.raises(ConfigError, match=r"pass the groups\.json made for this config"):
        read_grouping(grouping, ["x", "z"])
    with pytest.raises(ConfigError, match="'b' is not in"):
        read_grouping(grouping, ["x", "y"], "b")
    with pytest.raises(ConfigError, match="no 3-group partition for a"):
        read_grouping(grouping, ["x", "y"], "a", 3)
    with pytest.raises(ConfigError, match="does not exist"):
        read_grouping(tmp_path / "missing.json", ["x"])
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not a readable JSON file"):
        read_grouping(tmp_path / "bad.json", ["x"])
    assert [s.groups for s in read_grouping(grouping, ["x", "y"])] == [[["x"], ["y"]]]
