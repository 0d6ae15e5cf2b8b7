"""`polytask export`: hf folders that transformers alone loads (same logits as polytask to
1e-5), a polytask folder that `polytask.load` reloads, and bad input that writes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import polytask
from polytask import Trainer, load_config
from polytask.cli import app
from polytask.errors import ConfigError
from polytask.export import LOADER, TOKEN_LOADER, export_run
from polytask.merge.regime import MergeOutcome
from polytask.models.inputs import collate

SENTENCES = ["the movie was good and the plot moved", "an awful film", "tasty food"]
WORDS = [["alice", "went", "to", "paris"], ["bob", "went", "to", "rome", "today"]]


@pytest.fixture(scope="module")
def text_run(tiny_bert: Path, text_files: dict[str, Path],
             tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few steps of joint training of a sentence task and a token task on a tiny BERT."""
    run = tmp_path_factory.mktemp("export") / "run"
    config = load_config({
        "tasks": [
            {"name": "sentiment", "kind": "classification", "input": "sentence",
             "label": "label", "data": {"path": str(text_files["sentiment"])}},
            {"name": "ner", "kind": "token_classification", "input": "tokens",
             "label": "tags", "data": {"path": str(text_files["ner"])}}],
        "model": {"backbone": {"type": "hf", "name": str(tiny_bert), "max_length": 24}},
        "sampler": "round_robin", "baselines": "none",
        "train": {"max_steps": 4, "batch_size": 8, "eval_every": 4, "progress": False,
                  "callbacks": [], "lr": 5e-3}})
    Trainer(config, run).fit()
    return run


def polytask_logits(run_dir: Path, task: str, rows: pd.DataFrame) -> torch.Tensor:
    run = polytask.load(run_dir)
    words = run.kinds[task].level == "token"
    encoded = run.encoder.encode(rows, run.tasks[task].input_columns, words=words)
    batch = collate(encoded, torch.arange(len(rows)))
    run.model.eval()
    with torch.no_grad():
        return run.model({task: batch}).outputs[task]


def _without_polytask(code: str) -> None:
    """Run `code` in a fresh interpreter where importing polytask fails."""
    guard = "import sys\nsys.modules['polytask'] = None\n"
    done = subprocess.run([sys.executable, "-c", guard + code], capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                               "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]


def test_hf_export_reloads_with_transformers_alone_to_the_same_logits(
        text_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "hf"
    folders = export_run(text_run, out, fmt="hf")
    assert [f.name for f in folders] == ["sentiment", "ner"]
    sentence_logits = polytask_logits(text_run, "sentiment", pd.DataFrame({"sentence": SENTENCES}))
    torch.save(sentence_logits, tmp_path / "sentence.pt")
    loader = LOADER.format(folder=out / "sentiment")
    _without_polytask(loader + f"""
expected = torch.load({str(tmp_path / 'sentence.pt')!r})
got = logits({SENTENCES!r})
assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
""")
    token_logits = polytask_logits(text_run, "ner", pd.DataFrame({"tokens": WORDS}))
    torch.save(token_logits, tmp_path / "tokens.pt")
    _without_polytask(TOKEN_LOADER.format(folder=out / "ner") + f"""
expected = torch.load({str(tmp_path / 'tokens.pt')!r})
batch = tokenizer({WORDS!r}, is_split_into_words=True, truncation=True, max_length=24,
                  padding=True, return_tensors="pt")
with torch.no_grad():
    got = model(**batch).logits
width = min(got.shape[1], expected.shape[1])
assert torch.allclose(got[:, :width], expected[:, :width], atol=1e-5)
assert model.config.id2label[0] in ("B-LOC", "B-PER", "O")
""")
    card = (out / "sentiment" / "README.md").read_text()
    assert "## Test metrics" in card and "Δm%" in card and "head.safetensors" in card
    assert json.loads((out / "sentiment" / "head.json").read_text())["labels"] == ["neg", "pos"]


def test_polytask_export_predicts_like_the_run(text_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "pt"
    runner = CliRunner().invoke(app, ["export", str(text_run), "--out", str(out), "--format",
                                      "polytask", "--task", "sentiment"])
    assert runner.exit_code == 0, runner.output
    rows = pd.DataFrame({"sentence": SENTENCES})
    exported = polytask.load(out)
    assert list(exported.tasks) == ["sentiment"]
    assert (out / "model" / "backbone" / "config.json").exists()
    pd.testing.assert_frame_equal(exported.predict(rows, proba=True),
                                  polytask.load(text_run).predict(rows, "sentiment", proba=True))


def test_a_merged_mlp_run_exports_for_polytask(toy_merge: tuple[MergeOutcome, Path],
                                               tmp_path: Path) -> None:
    _, merge_out = toy_merge
    run_dir = merge_out / "merged" / "surgery"
    export_run(run_dir, tmp_path / "pt", fmt="polytask")
    rows = pd.DataFrame({"a": [1.0, -1.0], "b": [0.5, -0.5], "c": [1.0, 0.0], "d": [0.0, 0.0]})
    pd.testing.assert_frame_equal(polytask.load(tmp_path / "pt").predict(rows, proba=True),
                                  polytask.load(run_dir).predict(rows, proba=True))
    assert "Merged with `surgery`" in (tmp_path / "pt" / "README.md").read_text()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"fmt": "onnx"}, "--format"),
    ({"task": "sentimnt"}, "no task 'sentimnt'"),
])
def test_bad_input_writes_nothing(text_run: Path, tmp_path: Path, kwargs: dict[str, str],
                                  message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        export_run(text_run, tmp_path / "out", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_hf_refuses_an_mlp_run_and_a_full_folder(toy_merge: tuple[MergeOutcome, Path],
                                                 text_run: Path, tmp_path: Path) -> None:
    _, merge_out = toy_merge
    with pytest.raises(ConfigError, match=r"not a Hugging Face encoder.*--format polytask"):
        export_run(merge_out / "merged" / "ties", tmp_path / "out", fmt="hf")
    with pytest.raises(ConfigError, match="no task 'nope'"):
        export_run(merge_out / "merged" / "surgery", tmp_path / "out", fmt="polytask",
                   task="nope")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an empty folder"):
        export_run(text_run, tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
