"""Adapters through the Trainer: exact resume, reload, balancers and samplers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from adapters_testlib import text_config
from safetensors.torch import load_file

from polytask import Trainer, load, load_config
from polytask.models.adapters import ADAPTERS
from polytask.train.callbacks import StepResult


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


@pytest.mark.parametrize("name", ADAPTERS.names())
def test_save_resume_and_load_are_bit_identical(tmp_path: Path, tiny_bert: Path,
                                                text_files: dict[str, Path],
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str],
                                                name: str) -> None:
    config = load_config(text_config(tiny_bert, text_files, {"name": name, "r": 2}))
    reference = Trainer(config, tmp_path / "ref").fit()
    printed = capsys.readouterr().err
    assert f"adapter {name}:" in printed and "% of the backbone" in printed

    original = Trainer._train_step

    def crashing(self: Trainer) -> StepResult:
        if self.step == 3:
            raise KeyboardInterrupt("simulated crash")
        return original(self)

    monkeypatch.setattr(Trainer, "_train_step", crashing)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, tmp_path / "run").fit()
    monkeypatch.setattr(Trainer, "_train_step", original)
    resumed = Trainer(config, tmp_path / "run", resume=True).fit()

    assert resumed["tasks"] == reference["tasks"]
    saved = _weights(tmp_path / "run")
    for key, tensor in _weights(tmp_path / "ref").items():
        assert torch.equal(tensor, saved[key]), key
    loaded = load(tmp_path / "run").model.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[key], saved[key]) for key in saved)
    trained = [p for k, p in loaded.items() if "lora" in k.lower() or "adapter" in k]
    assert trained  # the adapter's weights are part of what is saved and reloaded


@pytest.mark.parametrize("name", ["task_lora", "mtl_lora", "molora"])
@pytest.mark.parametrize(("balancer", "sampler"), [
    ("ew", "all"), ("pcgrad", "all"), ("mgda", "all"), ("ew", "temperature")])
def test_adapters_compose_with_balancers_and_samplers(tmp_path: Path, tiny_bert: Path,
                                                      text_files: dict[str, Path], name: str,
                                                      balancer: str, sampler: str) -> None:
    settings = text_config(tiny_bert, text_files, {"name": name, "r": 2}, max_steps=3,
                           checkpoint_every=100)
    config = load_config({**settings, "balancer": balancer, "sampler": sampler})
    trainer = Trainer(config, tmp_path / "run")
    results = trainer.fit()
    assert results["steps"] == 3
    assert all(isinstance(entry["value"], float) for entry in results["tasks"].values())
    frozen = [p for n, p in trainer.model.backbone.named_parameters() if "base_layer" in n]
    assert frozen and not any(p.requires_grad for p in frozen)
