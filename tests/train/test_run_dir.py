"""Nothing a user wrote is lost: foreign folders are refused, a run folder is locked while a
process writes it, --resume works before the first checkpoint, and a changed config on
resume is refused unless only the resumable keys changed (those are applied and recorded)."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from polytask import Trainer, load_config
from polytask.cli import app
from polytask.errors import ConfigError
from polytask.process import is_main_process
from polytask.train import run_dir
from polytask.train.baselines import baseline_dir
from polytask.train.trainer import train_baselines
from tests.conftest import tabular_config

runner = CliRunner()

#: A second process that takes a folder's lock and holds it until its stdin closes.
HOLD = ("import sys; from pathlib import Path; from polytask.train.run_dir import RunLock; "
        "lock = RunLock(Path(sys.argv[1])).__enter__(); print('locked', flush=True); "
        "sys.stdin.read()")


def _settings(**train: object) -> dict[str, object]:
    return {"max_steps": 8, "eval_every": 4, "checkpoint_every": 4, "lr": 0.001, **train}


def _config(path: Path, *overrides: str, **train: object):
    return load_config(tabular_config(path, **_settings(**train)), ["balancer=uw", *overrides])


def _crash_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    original = Trainer._train_step

    def crashing(self: Trainer) -> dict[str, float]:
        if self.step == step:
            raise KeyboardInterrupt("simulated crash")
        return original(self)

    monkeypatch.setattr(Trainer, "_train_step", crashing)


def _crashed_run(folder: Path, tabular_file: Path, monkeypatch: pytest.MonkeyPatch,
                 step: int) -> None:
    """A run killed at `step` (checkpoints every 4 steps)."""
    with monkeypatch.context() as patch:
        _crash_at(patch, step)
        with pytest.raises(KeyboardInterrupt):
            Trainer(_config(tabular_file), folder).fit()


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
            if p.is_file()}


# ----------------------------------------------------------------- folders that are not runs
def test_a_folder_that_is_not_a_run_is_refused_naming_what_would_be_lost(
        tmp_path: Path, tabular_file: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("# my notes\nlr: 1\n")
    (mine / "metrics.jsonl").write_text('{"mine": 1}\n')
    (mine / "notes.txt").write_text("keep me")
    before = _files(mine)
    with pytest.raises(ConfigError, match=r"not a polytask run: training would write over "
                                          r"config\.yaml, metrics\.jsonl"):
        Trainer(_config(tabular_file), mine)
    with pytest.raises(ConfigError, match="not a polytask run"):
        Trainer(_config(tabular_file), mine, resume=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match=r"it holds notes\.txt"):
        Trainer(_config(tabular_file), other)
    assert _files(mine) == before and _files(other) == {"notes.txt": b"keep me"}


def test_training_into_the_folder_of_its_own_config_is_refused(tmp_path: Path,
                                                               tabular_file: Path) -> None:
    """`polytask train config.yaml --run-dir .` used to replace the commented config."""
    text = "# my commented config\n" + yaml.safe_dump(tabular_config(tabular_file,
                                                                     max_steps=4))
    (tmp_path / "config.yaml").write_text(text)
    result = runner.invoke(app, ["train", str(tmp_path / "config.yaml"), "--run-dir",
                                 str(tmp_path)])
    assert result.exit_code == 2, result.output
    printed = " ".join(result.output.split())
    assert "is not a polytask run" in printed and "the config being trained" in printed
    assert (tmp_path / "config.yaml").read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_an_empty_folder_is_used_and_marked_as_a_run(tmp_path: Path,
                                                      tabular_file: Path) -> None:
    (tmp_path / "run").mkdir()
    Trainer(_config(tabular_file, max_steps=4), tmp_path / "run").fit()
    assert run_dir.is_run(tmp_path / "run")
    assert (tmp_path / "run" / run_dir.MARKER).exists()


def test_a_runs_own_config_is_read_but_never_rewritten(tmp_path: Path, tabular_file: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    _crashed_run(run, tabular_file, monkeypatch, step=2)  # before its first checkpoint
    own = run / "config.yaml"
    text = "# resumed by a restart loop\n" + own.read_text()
    own.write_text(text)
    changed = runner.invoke(app, ["train", str(own), "--run-dir", str(run), "--resume",
                                  "--set", "train.lr=0.5"])
    assert changed.exit_code == 2, changed.output
    assert "the run's own config.yaml" in " ".join(changed.output.split())
    result = runner.invoke(app, ["train", str(own), "--run-dir", str(run), "--resume"])
    assert result.exit_code == 0, result.output
    assert (run / "results.json").exists()
    assert own.read_text() == text


# ------------------------------------------------------------------------------- the lock
def test_a_folder_locked_by_another_process_is_refused_until_it_dies(
        tmp_path: Path, tabular_file: Path) -> None:
    """One real second process (importing polytask takes seconds, so only one)."""
    trainer = Trainer(_config(tabular_file, max_steps=4), tmp_path / "run")
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "locked"
        busy = (rf"run dir .*run is in use by process {process.pid} \(.*\); wait for it or "
                "choose another --run-dir")
        with pytest.raises(run_dir.RunDirInUse, match=busy):
            trainer.fit()  # constructed before the other process took the folder
        with pytest.raises(run_dir.RunDirInUse, match=busy):
            Trainer(_config(tabular_file), tmp_path / "run")
        with pytest.raises(run_dir.RunDirInUse, match=busy):
            Trainer(_config(tabular_file), tmp_path / "run", resume=True)
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [run_dir.MARKER]
    finally:
        process.send_signal(signal.SIGKILL)  # dies holding the lock: the OS releases it
        process.wait()
    trainer.fit()
    assert (tmp_path / "run" / "results.json").exists()


def test_only_the_first_process_under_torchrun_takes_the_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()
    monkeypatch.setenv("RANK", "0")
    assert is_main_process()
    with run_dir.RunLock(tmp_path / "run", enabled=False):
        assert not (tmp_path / "run").exists()


# ------------------------------------------------------------ resume before a checkpoint
def test_resume_before_the_first_checkpoint_starts_from_step_zero(
        tmp_path: Path, tabular_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = Trainer(_config(tabular_file), tmp_path / "ref").fit()
    _crashed_run(tmp_path / "run", tabular_file, monkeypatch, step=2)
    shown = io.StringIO()
    resumed = Trainer(_config(tabular_file), tmp_path / "run", resume=True,
                      console=Console(file=shown, width=300)).fit()
    assert f"no checkpoint in {tmp_path / 'run'} yet; starting from step 0" in shown.getvalue()
    assert resumed["tasks"] == reference["tasks"]
    steps = [json.loads(line)["step"] for line in
             (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # the killed attempt's records are gone
    fresh = Trainer(_config(tabular_file), tmp_path / "new", resume=True,
                    console=Console(file=io.StringIO())).fit()
    assert fresh["tasks"] == reference["tasks"]
    with pytest.raises(ConfigError, match="has finished"):
        Trainer(_config(tabular_file), tmp_path / "run", resume=True)


def test_a_crashed_baseline_is_retrained_but_a_foreign_folder_is_kept(
        tmp_path: Path, tabular_file: Path) -> None:
    config = load_config({**tabular_config(tabular_file, max_steps=2, eval_every=2),
                          "baselines_dir": str(tmp_path / "baselines"), "only": ["up"]})
    folder = baseline_dir(config, "up")
    folder.mkdir(parents=True)
    (folder / "data.csv").write_text("mine")
    with pytest.raises(ConfigError, match="not a polytask run"):
        train_baselines(config, Console(file=io.StringIO()))
    assert (folder / "data.csv").read_text() == "mine"
    (folder / "data.csv").unlink()
    (folder / run_dir.MARKER).touch()  # an attempt killed before its first checkpoint
    (folder / "metrics.jsonl").write_text('{"step": 1, "split": "train"}\n')
    values = train_baselines(config, Console(file=io.StringIO()))
    assert values["up"] is not None


# ----------------------------------------------------------------- config changes on resume
def test_resume_with_a_changed_learning_rate_is_refused(
        tmp_path: Path, tabular_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _crashed_run(tmp_path / "run", tabular_file, monkeypatch, step=6)
    saved = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"train\.lr: 0\.001 -> 0\.01\)\. Only "
                                          r"train\.max_steps"):
        Trainer(_config(tabular_file, lr=0.01), tmp_path / "run", resume=True)
    with pytest.raises(ConfigError, match=r"balancer\.name: 'uw' -> 'pcgrad'"):
        Trainer(_config(tabular_file, "balancer=pcgrad"), tmp_path / "run", resume=True)
    assert (tmp_path / "run" / "config.yaml").read_text() == saved


def test_resume_with_more_steps_extends_the_run_and_records_it(
        tmp_path: Path, tabular_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _crashed_run(tmp_path / "run", tabular_file, monkeypatch, step=6)
    shown = io.StringIO()
    results = Trainer(_config(tabular_file, max_steps=12), tmp_path / "run", resume=True,
                      console=Console(file=shown, width=300)).fit()
    assert results["steps"] == 12
    assert "resumed from step 4; train.max_steps: 8 -> 12" in shown.getvalue()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 12
    history = json.loads((tmp_path / "run" / "resumes.json").read_text())
    assert [(r["step"], r["changed"]) for r in history] == [
        (4, {"train.max_steps": {"old": 8, "new": 12}})]
