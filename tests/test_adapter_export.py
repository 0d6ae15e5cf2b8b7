"""`polytask export` of adapter runs: `--format hf` merges the task's low-rank path into a
plain transformers encoder, `--format peft` writes PEFT adapter folders; both reload with
transformers / PEFT and give polytask's logits to 1e-5. Methods without a merge or a PEFT
equivalent are refused by name, writing nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

import polytask
from polytask import Trainer, load_config
from polytask.adapter_export import PEFT_LOADER
from polytask.errors import ConfigError
from polytask.export import LOADER, export_run
from polytask.models.inputs import collate
from polytask.train.checkpoint import save_weights
from tests.merge.test_export import polytask_logits

SENTENCES = ["the movie was good and the plot moved", "an awful film", "tasty food"]
WORDS = [["alice", "went", "to", "paris"], ["bob", "went", "to", "rome", "today"]]
#: Small per-method options, so that every run is a few seconds on the tiny BERT.
OPTIONS: dict[str, dict[str, Any]] = {
    "mpt": {"num_virtual_tokens": 3}, "poly": {"skills": 2}, "mhr": {"skills": 2, "heads": 2}}


def _train(method: str, tiny_bert: Path, text_files: dict[str, Path], run: Path) -> Path:
    """Two steps of a sentence task and a token task through `method`, then every adapter
    parameter set to random values (a fresh LoRA's B is zero: its ΔW would be too)."""
    config = load_config({
        "tasks": [
            {"name": "sentiment", "kind": "classification", "input": "sentence",
             "label": "label", "data": {"path": str(text_files["sentiment"])}},
            {"name": "ner", "kind": "token_classification", "input": "tokens",
             "label": "tags", "data": {"path": str(text_files["ner"])}}],
        "model": {"backbone": {"type": "hf", "name": str(tiny_bert), "max_length": 24},
                  "adapter": {"name": method, "r": 2, **OPTIONS.get(method, {})}},
        "sampler": "all", "baselines": "none",
        "train": {"max_steps": 2, "batch_size": 8, "eval_every": 2, "progress": False,
                  "callbacks": [], "lr": 5e-3}})
    Trainer(config, run).fit()
    loaded = polytask.load(run)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in loaded.model.adapter.adapter_parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    save_weights(loaded.model.state_dict(), run / "model" / "model.safetensors")
    return run


@pytest.fixture(scope="module")
def adapter_runs(tiny_bert: Path, text_files: dict[str, Path],
                 tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`adapter_runs(method)`: the run directory of `method` (trained once per module)."""
    runs: dict[str, Path] = {}
    folder = tmp_path_factory.mktemp("adapter-export")

    def get(method: str) -> Path:
        if method not in runs:
            runs[method] = _train(method, tiny_bert, text_files, folder / method)
        return runs[method]

    return get


def _loader_logits(code: str, texts: list[str]) -> torch.Tensor:
    """Run a README loader in a fresh namespace and call its `logits(texts)`."""
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # the model card's own snippet, run as a user would
    return namespace["logits"](texts)


def _without_adapter(run_dir: Path) -> torch.Tensor:
    """The sentence task's logits with the adapter's path switched off (its base model)."""
    run = polytask.load(run_dir)
    with torch.no_grad():
        for parameter in run.model.adapter.adapter_parameters():
            parameter.zero_()
    rows = pd.DataFrame({"sentence": SENTENCES})
    encoded = run.encoder.encode(rows, run.tasks["sentiment"].input_columns)
    run.model.eval()
    with torch.no_grad():
        return run.model({"sentiment": collate(encoded, torch.arange(3))}).outputs["sentiment"]


@pytest.mark.parametrize("method", ["lora", "task_lora", "mtl_lora", "multilora", "mtlora",
                                    "poly", "mhr", "palora"])
def test_hf_merges_the_task_path_into_a_plain_encoder(adapter_runs: Any, method: str,
                                                       tmp_path: Path) -> None:
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    run = adapter_runs(method)
    out = tmp_path / "hf"
    folders = export_run(run, out, fmt="hf")
    assert [f.name for f in folders] == ["sentiment", "ner"]
    expected = polytask_logits(run, "sentiment", pd.DataFrame({"sentence": SENTENCES}))
    assert (expected - _without_adapter(run)).abs().max() > 1e-3  # the path is not a no-op
    got = _loader_logits(LOADER.format(folder=out / "sentiment"), SENTENCES)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    config = json.loads((out / "sentiment" / "config.json").read_text())
    assert "adapter" not in json.dumps(config)
    token_model = AutoModelForTokenClassification.from_pretrained(out / "ner").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "ner")
    batch = tokenizer(WORDS, is_split_into_words=True, truncation=True, max_length=24,
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        tokens = token_model(**batch).logits
    expected_tokens = polytask_logits(run, "ner", pd.DataFrame({"tokens": WORDS}))
    width = min(tokens.shape[1], expected_tokens.shape[1])
    assert torch.allclose(tokens[:, :width], expected_tokens[:, :width], atol=1e-5)


@pytest.mark.parametrize("method", ["lora", "task_lora", "poly", "mhr", "mpt"])
def test_peft_folders_reload_with_peft_to_the_same_logits(adapter_runs: Any, method: str,
                                                          tmp_path: Path) -> None:
    run = adapter_runs(method)
    out = tmp_path / "peft"
    folders = export_run(run, out, fmt="peft")
    assert [f.name for f in folders] == ["base", "sentiment", "ner"]
    config = json.loads((out / "sentiment" / "adapter_config.json").read_text())
    assert config["peft_type"] == {"lora": "LORA", "task_lora": "LORA", "poly": "POLY",
                                   "mhr": "POLY", "mpt": "MULTITASK_PROMPT_TUNING"}[method]
    assert (out / "sentiment" / "adapter_model.safetensors").exists()
    expected = polytask_logits(run, "sentiment", pd.DataFrame({"sentence": SENTENCES}))
    got = _loader_logits(PEFT_LOADER.format(folder=out / "sentiment"), SENTENCES)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    assert "PeftModel.from_pretrained" in (out / "sentiment" / "README.md").read_text()


def test_task_lora_exports_each_task_its_own_lora(adapter_runs: Any, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    export_run(adapter_runs("task_lora"), tmp_path / "peft", fmt="peft")
    first = load_file(tmp_path / "peft" / "sentiment" / "adapter_model.safetensors")
    second = load_file(tmp_path / "peft" / "ner" / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    assert all(not torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize(("method", "fmt", "message"), [
    ("molora", "hf", "'molora' cannot be merged"),
    ("mpt", "hf", "'mpt' prepends a soft prompt"),
    ("mtl_lora", "peft", "PEFT has no equivalent of the adapter 'mtl_lora'"),
    ("molora", "peft", "PEFT has no equivalent of the adapter 'molora'"),
])
def test_methods_without_the_format_are_refused_by_name(adapter_runs: Any, method: str,
                                                        fmt: str, message: str,
                                                        tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        export_run(adapter_runs(method), tmp_path / "out", fmt=fmt)
    assert list(tmp_path.iterdir()) == []


def test_polytask_format_of_an_adapter_run_predicts_like_the_run(adapter_runs: Any,
                                                                 tmp_path: Path) -> None:
    run = adapter_runs("task_lora")
    export_run(run, tmp_path / "pt", fmt="polytask")
    rows = pd.DataFrame({"sentence": SENTENCES})
    exported = polytask.load(tmp_path / "pt").predict(rows, "sentiment", proba=True)
    pd.testing.assert_frame_equal(exported,
                                  polytask.load(run).predict(rows, "sentiment", proba=True))


def test_one_task_of_an_adapter_run_is_exported_by_hf_not_polytask(adapter_runs: Any,
                                                                   tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"adapter \(task_lora\) is saved for all its tasks"):
        export_run(adapter_runs("task_lora"), tmp_path / "pt", "sentiment", fmt="polytask")
    assert list(tmp_path.iterdir()) == []
    folders = export_run(adapter_runs("task_lora"), tmp_path / "hf", "sentiment", fmt="hf")
    assert [f.name for f in folders] == ["sentiment"]
