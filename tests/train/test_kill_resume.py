"""A real `polytask train` process killed with SIGKILL at random steps, resumed each time,
ends with weights bit-identical to an uninterrupted run; SIGTERM checkpoints and stops."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from polytask.train import checkpoint
from tests.conftest import tabular_config

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, data: Path) -> Path:
    config = tabular_config(data, max_steps=150, eval_every=40, checkpoint_every=3,
                            batch_size=64, keep_checkpoints=3)
    config["model"] = {"backbone": {"type": "mlp", "hidden": [256, 256]}}
    config["balancer"] = "dwa"  # stateful: its loss history must survive the kill
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _command(config: Path, run: Path, resume: bool) -> list[str]:
    return [sys.executable, "-m", "polytask", "train", str(config), "--run-dir", str(run),
            *(["--resume"] if resume else [])]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _newest_step(run: Path) -> int:
    folders = checkpoint.list_checkpoints(run / "checkpoints")
    return int(folders[-1].name.split("-")[1]) if folders else 0


def _kill_after(config: Path, run: Path, resume: bool, target: int) -> None:
    process = subprocess.Popen(_command(config, run, resume), env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _newest_step(run) < target and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_sigkill_at_random_steps_then_resume_is_bit_identical(tmp_path: Path,
                                                               tabular_file: Path) -> None:
    config = _config(tmp_path, tabular_file)
    reference = tmp_path / "reference"
    subprocess.run(_command(config, reference, False), env=_env(), check=True,
                   capture_output=True)
    run = tmp_path / "killed"
    rng = random.Random(0)
    resume = False
    for target in sorted(rng.sample(range(10, 130), 3)):
        _kill_after(config, run, resume, target)
        assert not (run / "results.json").exists(), "the run finished before the kill"
        resume = True
    finished = subprocess.run(_command(config, run, True), env=_env(), capture_output=True,
                              text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    expected = load_file(str(reference / "model" / "model.safetensors"))
    actual = load_file(str(run / "model" / "model.safetensors"))
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, actual[name]), name
    assert (run / "results.json").read_text() != ""


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(tmp_path: Path,
                                                       tabular_file: Path) -> None:
    config = _config(tmp_path, tabular_file)
    run = tmp_path / "run"
    process = subprocess.Popen(_command(config, run, False), env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _newest_step(run) < 6:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    printed = " ".join(err.split())
    assert "stopped by a signal at step" in printed and "--resume" in printed
    stopped_at = int(printed.split("stopped by a signal at step ")[1].split(";")[0])
    assert _newest_step(run) == stopped_at  # a checkpoint of the very step it stopped at
    assert "Traceback" not in err
