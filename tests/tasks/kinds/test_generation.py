"""generation kind: templates (named fields only, clear errors), the loss masked to the target
tokens on a causal LM and an encoder-decoder, demonstrations, and the text metrics."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from polytask.errors import ConfigError, DataError
from polytask.models.generative import RANK, GenerativeInputs
from polytask.tasks import metrics as M
from polytask.tasks.kinds import IGNORE, TASK_KINDS
from polytask.tasks.kinds.generation import Generation
from polytask.tasks.spec import Task
from tests.generative_models import save_tiny_llama, save_tiny_t5, sentiment_rows


def _kind(**options: object) -> Generation:
    options = {"prompt": "review: {text} ->", "target": " {label}", **options}
    task = Task(name="gen", kind="generation", input="text", label="label", options=options)
    return TASK_KINDS.get("generation")(task)


@pytest.fixture(scope="module")
def causal(tmp_path_factory: pytest.TempPathFactory) -> GenerativeInputs:
    folder = save_tiny_llama(tmp_path_factory.mktemp("llama"))
    return GenerativeInputs(AutoTokenizer.from_pretrained(folder), "llama", 32, False)


@pytest.fixture(scope="module")
def seq2seq(tmp_path_factory: pytest.TempPathFactory) -> GenerativeInputs:
    folder = save_tiny_t5(tmp_path_factory.mktemp("t5"))
    return GenerativeInputs(AutoTokenizer.from_pretrained(folder), "t5", 32, True, 0)


def _bytes(text: str) -> list[int]:
    return [b + 3 for b in text.encode()]  # ByT5: byte b is token b + 3


def test_causal_labels_are_the_next_target_token_and_ignore_the_prompt(
        causal: GenerativeInputs) -> None:
    frame = pd.DataFrame({"text": ["ok", "a longer one"], "label": ["pos", "neg"]})
    kind = _kind()
    kind.fit(frame)
    inputs = kind.encode_inputs(frame, causal, "train")
    labels = kind.encode(frame, "train")
    for row, (text, label) in enumerate(zip(frame["text"], frame["label"], strict=True)):
        prompt = _bytes(f"review: {text} ->")
        target = [*_bytes(f" {label}"), 1]  # the end token closes the target
        length = len(prompt) + len(target)
        assert inputs["input_ids"][row, :length].tolist() == prompt + target
        token_labels = labels[row, 0]
        assert (token_labels[: len(prompt) - 1] == IGNORE).all()  # no loss on the prompt
        assert token_labels[len(prompt) - 1: length - 1].tolist() == target
        assert (token_labels[length - 1:] == IGNORE).all()
        assert inputs["prompt_ids"][row, -len(prompt):].tolist() == prompt  # left-padded
    assert (labels[:, 1, 0] == IGNORE).all()  # no gold label id without a verbalizer


def test_the_loss_is_the_cross_entropy_of_the_target_tokens_only(
        causal: GenerativeInputs) -> None:
    frame = sentiment_rows(4)
    kind = _kind()
    kind.fit(frame)
    inputs = kind.encode_inputs(frame, causal, "train")
    labels = kind.encode(frame, "train")
    logits = torch.randn(*inputs["input_ids"].shape, 384, requires_grad=True)
    loss = kind.loss(logits, labels)
    target = labels[:, 0] != IGNORE
    expected = F.cross_entropy(logits[target], labels[:, 0][target])
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert logits.grad is not None
    assert logits.grad[~target].abs().sum() == 0  # prompt positions get no gradient
    assert logits.grad[target].abs().sum() > 0


def test_encoder_decoder_targets_are_shifted_right_for_the_decoder(
        seq2seq: GenerativeInputs) -> None:
    frame = pd.DataFrame({"text": ["fine"], "label": ["pos"]})
    kind = _kind(target="{label}")
    kind.fit(frame)
    inputs = kind.encode_inputs(frame, seq2seq, "train")
    labels = kind.encode(frame, "train")
    target = [*_bytes("pos"), 1]
    assert inputs["input_ids"][0].tolist() == [*_bytes("review: fine ->"), 1]  # T5's </s>
    assert labels[0, 0, : len(target)].tolist() == target
    assert inputs["decoder_input_ids"][0].tolist() == [0, *target[:-1]]


def test_long_prompts_are_cut_on_the_configured_side(causal: GenerativeInputs) -> None:
    frame = pd.DataFrame({"text": ["x" * 100], "label": ["pos"]})
    for side, kept in (("left", "x ->"), ("right", "review: ")):
        kind = _kind(truncation=side)
        kind.fit(frame)
        inputs = kind.encode_inputs(frame, causal, "train")
        prompt = inputs["prompt_ids"][0][inputs["prompt_mask"][0].bool()].tolist()
        assert len(prompt) == 32
        assert (prompt[-len(kept):] if side == "left" else prompt[: len(kept)]) == _bytes(kept)


def test_demonstrations_are_training_examples_before_each_prompt(
        causal: GenerativeInputs) -> None:
    train = sentiment_rows(6)
    kind = _kind(demonstrations=2, separator=" | ")
    kind.fit(train)
    assert len(kind.demonstrations) == 2
    assert all(d in {f"review: {t} -> {lab}" for t, lab in zip(train["text"], train["label"],
                                                             strict=True)}
               for d in kind.demonstrations)
    roomy = GenerativeInputs(causal.tokenizer, "llama", 256, False)
    ids = kind.encode_inputs(train.head(1), roomy, "test")["prompt_ids"][0]
    text = bytes(t - 3 for t in ids.tolist() if t > 2).decode()
    assert text.startswith(" | ".join(kind.demonstrations) + " | review: ")


def test_a_verbalizer_makes_a_rank_task_with_a_candidate_per_label(
        causal: GenerativeInputs) -> None:
    frame = pd.DataFrame({"text": ["a", "b"], "label": ["neg", "pos"]})
    kind = _kind(verbalizer={"neg": "bad", "pos": "good"})
    assert kind.level == RANK and kind.metric == "accuracy"
    kind.fit(frame)
    inputs = kind.encode_inputs(frame, causal, "train")
    labels = kind.encode(frame, "train")
    assert kind.label_names == ["neg", "pos"]
    assert labels[:, 1, 0].tolist() == [0, 1]
    assert inputs["candidate_ids"].shape[:2] == (2, 2)
    assert inputs["candidate_ids"][0, 1, :6].tolist() == [*_bytes(" good"), 1]
    assert kind.decode(torch.tensor([1, 0])) == ["pos", "neg"]


def test_a_template_field_that_is_not_a_column_names_the_field(
        causal: GenerativeInputs) -> None:
    frame = sentiment_rows(3)
    with pytest.raises(DataError, match=r"options.prompt: field \{review\} names no column"):
        _kind(prompt="{review} ->").fit(frame)
    kind = _kind(target=" {headline}")
    with pytest.raises(DataError, match=r"options.target: field \{headline\}"):
        kind.fit(frame)
    kind = _kind()
    kind.fit(frame)
    with pytest.raises(DataError, match=r"field \{text\}"):
        kind.encode_inputs(frame.drop(columns="text"), causal, "test")


@pytest.mark.parametrize("prompt", ["{} x", "{0}", "{text.upper}", "{text[0]}", "{text!r}",
                                    "{text:>9}", "{text"])
def test_templates_take_named_fields_only(prompt: str) -> None:
    with pytest.raises(ConfigError, match=r"tasks.gen.options.prompt"):
        _kind(prompt=prompt)


def test_the_prompt_may_not_read_the_label_and_metrics_fit_the_mode() -> None:
    with pytest.raises(ConfigError, match="put it in `target` only"):
        _kind(prompt="{text} {label}")
    task = Task(name="gen", kind="generation", input="text", label="label", metric="accuracy",
                options={"prompt": "{text}"})
    with pytest.raises(ConfigError, match="without a verbalizer is scored on generated text"):
        TASK_KINDS.get("generation")(task)


def test_a_verbalizer_needs_the_label_in_the_target() -> None:
    with pytest.raises(ConfigError, match=r"options.target: '\{text\}' has no \{label\}"):
        _kind(target="{text}", verbalizer={"neg": "bad", "pos": "good"})


def test_a_label_without_a_verbalizer_word_is_reported() -> None:
    frame = pd.DataFrame({"text": ["a", "b"], "label": ["neg", "meh"]})
    with pytest.raises(DataError, match=r"label 'meh' .* has no word in options.verbalizer"):
        _kind(verbalizer={"neg": "bad", "pos": "good"}).fit(frame)


def test_generation_metrics_golden_values() -> None:
    same = M.generation_metrics(["the cat  sat on the mat"], ["the cat sat on the mat"])
    assert same == {"exact_match": 1.0, "rougeL": 1.0, "bleu": pytest.approx(100.0),
                    "chrf": pytest.approx(100.0)}
    partial = M.generation_metrics(["the cat sat", "dog"], ["the cat", "dog"])
    assert partial["exact_match"] == 0.5
    assert partial["rougeL"] == pytest.approx((0.8 + 1.0) / 2)  # P 2/3, R 1 -> F 0.8
    with pytest.raises(ValueError, match="no examples"):
        M.generation_metrics([], [])


def test_generation_metrics_of_decoded_predictions(causal: GenerativeInputs) -> None:
    frame = pd.DataFrame({"text": ["a", "b"], "label": ["yes", "no"]})
    kind = _kind()
    kind.fit(frame)
    kind.encode_inputs(frame, causal, "test")
    labels = kind.encode(frame, "test")
    generated = torch.full((2, 6), IGNORE)
    generated[0, :4] = torch.tensor(_bytes(" yes"))
    generated[1, :3] = torch.tensor(_bytes(" ok"))
    assert kind.decode(generated) == ["yes", "ok"]
    assert kind.metrics(generated, labels)["exact_match"] == 0.5


def test_rank_metrics_are_classification_metrics(causal: GenerativeInputs) -> None:
    frame = pd.DataFrame({"text": ["a", "b", "c"], "label": ["neg", "pos", None]})
    kind = _kind(verbalizer={"neg": "bad", "pos": "good"})
    kind.fit(frame)
    kind.encode_inputs(frame, causal, "test")
    labels = kind.encode(frame, "test")
    scores = torch.tensor([[0.0, -1.0], [0.0, -2.0], [-1.0, 0.0]])  # row 2: unlabelled
    metrics = kind.metrics(kind.predict(scores), labels)
    assert metrics["accuracy"] == 0.5
    with pytest.raises(Exception, match="decoding"):
        kind.predict(torch.randn(3, 4, 384))  # teacher-forced logits are not predictions


def test_rows_to_predict_need_no_target_column(causal: GenerativeInputs) -> None:
    kind = _kind()
    kind.fit(sentiment_rows(3))
    inputs = kind.encode_inputs(pd.DataFrame({"text": ["new"]}), causal, "predict")
    assert inputs["input_ids"][0, : len(_bytes("review: new ->"))].tolist() == _bytes(
        "review: new ->")
    assert int(inputs["attention_mask"].sum()) == len(_bytes("review: new ->"))
