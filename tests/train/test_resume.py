"""Reproducibility, exact resume, checkpoint integrity and the NaN policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from polytask import Trainer, load_config
from polytask.errors import ConfigError, TrainingError
from polytask.train import checkpoint
from polytask.train.callbacks import StepResult
from tests.conftest import poison_size_loss, tabular_config


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def _config(path: Path, balancer: str = "uw", **overrides: object):
    settings = {"max_steps": 24, "eval_every": 6, "checkpoint_every": 4, **overrides}
    return load_config(tabular_config(path, **settings), [f"balancer={balancer}",
                                                          "sampler=all"])


def test_same_seed_gives_identical_results(tmp_path: Path, tabular_file: Path) -> None:
    first = Trainer(_config(tabular_file), tmp_path / "a").fit()
    second = Trainer(_config(tabular_file), tmp_path / "b").fit()
    assert first["tasks"] == second["tasks"]
    for name, tensor in _weights(tmp_path / "a").items():
        assert torch.equal(tensor, _weights(tmp_path / "b")[name]), name
    other = Trainer(_config(tabular_file, seed=1), tmp_path / "c").fit()
    assert other["tasks"] != first["tasks"]


@pytest.mark.parametrize(("crash_at", "balancer"), [
    (5, "uw"), (13, "uw"), (13, "dwa"), (13, "famo"), (13, "gradvac"), (13, "nash_mtl"),
    (13, "rlw"), (13, "{name: pcgrad, sparse: 0.5}")])
def test_resume_after_a_crash_is_bit_identical(tmp_path: Path, tabular_file: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               crash_at: int, balancer: str) -> None:
    """Stateful balancers (loss history, logits, EMA targets, random draws, a fixed
    parameter subset) resume exactly."""
    reference = Trainer(_config(tabular_file, balancer, grad_accum=2), tmp_path / "ref").fit()

    original = Trainer._train_step

    def crashing(self: Trainer) -> StepResult:
        if self.step == crash_at:
            raise KeyboardInterrupt("simulated crash")
        return original(self)

    monkeypatch.setattr(Trainer, "_train_step", crashing)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_config(tabular_file, balancer, grad_accum=2), tmp_path / "run").fit()
    monkeypatch.setattr(Trainer, "_train_step", original)
    resumed = Trainer(_config(tabular_file, balancer, grad_accum=2), tmp_path / "run",
                      resume=True).fit()

    assert resumed["tasks"] == reference["tasks"]
    for name, tensor in _weights(tmp_path / "ref").items():
        assert torch.equal(tensor, _weights(tmp_path / "run")[name]), name
    steps = [json.loads(line)["step"] for line in
             (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    reference_steps = [json.loads(line)["step"] for line in
                       (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert steps == reference_steps  # the log holds each step once


def test_corrupt_checkpoint_falls_back_to_the_previous(tmp_path: Path,
                                                       tabular_file: Path) -> None:
    Trainer(_config(tabular_file, max_steps=8, keep_checkpoints=3), tmp_path / "run").fit()
    folders = checkpoint.list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [f.name for f in folders] == ["step-0000004", "step-0000008"]
    weights = folders[-1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(Exception, match="checksum mismatch"):
        checkpoint.verify(folders[-1])
    messages: list[str] = []
    step, _, _ = checkpoint.load_latest(tmp_path / "run" / "checkpoints", warn=messages.append)
    assert step == 4
    assert "step-0000008" in messages[0] and "checksum mismatch" in messages[0]


def test_keeps_only_the_last_k_checkpoints(tmp_path: Path, tabular_file: Path) -> None:
    Trainer(_config(tabular_file, max_steps=16, keep_checkpoints=2), tmp_path / "run").fit()
    folders = checkpoint.list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [f.name for f in folders] == ["step-0000012", "step-0000016"]
    assert not list((tmp_path / "run" / "checkpoints").glob(".*tmp*"))


def test_an_existing_run_is_never_overwritten(tmp_path: Path, tabular_file: Path) -> None:
    Trainer(_config(tabular_file, max_steps=4), tmp_path / "run").fit()
    before = (tmp_path / "run" / "results.json").read_text()
    with pytest.raises(ConfigError, match="already holds a run"):
        Trainer(_config(tabular_file, max_steps=4), tmp_path / "run")
    assert (tmp_path / "run" / "results.json").read_text() == before
    with pytest.raises(ConfigError, match="has finished"):
        Trainer(_config(tabular_file, max_steps=4), tmp_path / "run", resume=True)


def test_nan_loss_stops_with_task_and_step(tmp_path: Path, tabular_file: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    poison_size_loss(monkeypatch, at_step=6)
    with pytest.raises(TrainingError, match=r"step 7: the loss of task\(s\) \['size'\]"):
        Trainer(_config(tabular_file), tmp_path / "run").fit()
    assert checkpoint.list_checkpoints(tmp_path / "run" / "checkpoints")  # step 4 kept


def test_nan_loss_skip_policy_goes_on(tmp_path: Path, tabular_file: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    poison_size_loss(monkeypatch, at_step=6)
    results = Trainer(_config(tabular_file, nan_policy="skip"), tmp_path / "run").fit()
    assert results["steps"] == 24
    assert all(torch.isfinite(t).all() for t in _weights(tmp_path / "run").values())


def test_early_stopping_keeps_the_best_checkpoint(tmp_path: Path, tabular_file: Path) -> None:
    results = Trainer(_config(tabular_file, max_steps=200, eval_every=2, patience=2, lr=0.5),
                      tmp_path / "run").fit()
    assert results["stopped_early"] and results["steps"] < 200
    assert results["best_step"] is not None and results["best_step"] < results["steps"]


@pytest.mark.parametrize("balancer", ["uw", "pcgrad", "mgda"])
def test_bf16_autocast_with_accumulation_and_balancers(tmp_path: Path, tabular_file: Path,
                                                       balancer: str) -> None:
    config = load_config(tabular_config(tabular_file, precision="bf16", grad_accum=2),
                         [f"balancer={balancer}"])
    results = Trainer(config, tmp_path / "run").fit()
    assert all(torch.isfinite(t).all() for t in _weights(tmp_path / "run").values())
    assert results["tasks"]["size"]["metrics"]["pearson"] > 0.6
