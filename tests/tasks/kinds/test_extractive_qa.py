"""extractive_qa: SQuAD's metric on hand-made answers, answer windows that map back to the
exact text, bad answers named by field, and training/prediction next to classification."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor
from transformers import AutoTokenizer
from typer.testing import CliRunner

from polytask import Trainer, load, load_config
from polytask.cli import app
from polytask.errors import DataError
from polytask.models.inputs import TextInputs
from polytask.tasks.kinds import IGNORE, TASK_KINDS
from polytask.tasks.kinds.extractive_qa import ExtractiveQA, normalize_answer, squad_metrics
from polytask.tasks.spec import Task

NAMES = ["ada", "bob", "carol", "dan", "eve", "fay"]
FILLER = "the film was shown in the town hall before the news and the sport report"


def _kind(label: str | list[str] = "answers", **options: object) -> ExtractiveQA:
    task = Task(name="qa", kind="extractive_qa", input=["question", "context"], label=label,
                options=options)
    return TASK_KINDS.get("extractive_qa")(task)


@pytest.fixture(scope="module")
def encoder(tiny_bert: Path) -> TextInputs:
    return TextInputs(AutoTokenizer.from_pretrained(tiny_bert), "tiny-bert", 64)


def _rows(n: int, seed: int = 0) -> pd.DataFrame:
    """Questions whose answer (a name) sits at varying depths of a long context; offsets in
    numpy arrays, as hub datasets give them."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        name = NAMES[i % len(NAMES)]
        before = " ".join([FILLER] * int(rng.integers(0, 3)))
        context = f"{before} the winner was {name} . {FILLER}".strip()
        start = context.index(f"was {name}") + 4
        rows.append({"question": "who was the winner ?", "context": context,
                     "answers": {"text": [name], "answer_start": np.array([start])}})
    return pd.DataFrame(rows)


def _perfect(labels: Tensor, length: int) -> Tensor:
    """Start/end scores that put the labelled span of each window first."""
    scores = torch.zeros((labels.shape[0], length, 2))
    for window, (start, end) in enumerate(labels[:, :2].tolist()):
        if start != IGNORE:
            scores[window, start, 0] = scores[window, end, 1] = 10.0
    return scores


def test_squad_normalisation_and_golden_scores() -> None:
    assert normalize_answer("  The  Eiffel-Tower! ") == "eiffeltower"
    assert normalize_answer("an apple, a pear and THE plum") == "apple pear and plum"
    scores = squad_metrics(
        ["the Eiffel Tower!", "in Paris France", "Denver Broncos", "", "1843"],
        [["Eiffel Tower"], ["Paris"], ["Carolina Panthers", "Broncos"], [], ["in 1843", "1842"]])
    # exact: 1, 0, 0, 1 (no answer expected and given), 0 -> 2/5
    # f1:    1, 2*(1/3)*1/(1/3+1) = 0.5, max(0, 2*(1/2)*1/(1/2+1) = 2/3), 1, max(2/3, 0)
    assert scores["exact_match"] == pytest.approx(2 / 5)
    assert scores["f1"] == pytest.approx((1 + 0.5 + 2 / 3 + 1 + 2 / 3) / 5)
    assert squad_metrics(["x"], [[]]) == {"exact_match": 0.0, "f1": 0.0}


def test_windows_map_answers_back_to_the_exact_text(encoder: TextInputs) -> None:
    kind = _kind(max_length=24, stride=8)
    frame = _rows(12)
    inputs = kind.encode_inputs(frame, encoder, "train")
    labels = kind.encode(frame, "train")
    assert inputs["input_ids"].shape == (labels.shape[0], 24)
    assert labels.shape[0] > len(frame)  # long contexts became several windows
    table = kind._windows["train"]
    found = set()
    for window, (start, end, index, _) in enumerate(labels.tolist()):
        assert index == window
        if start == 0:
            continue  # the answer is not inside this window
        row = int(table.rows[window])
        text, first = frame.answers[row]["text"][0], frame.answers[row]["answer_start"][0]
        offsets = table.offsets[window]
        assert (int(offsets[start, 0]), int(offsets[end, 1])) == (first, first + len(text))
        found.add(row)
    assert found == set(range(len(frame)))  # every answer is whole in some window
    kind.window_length = 24
    predictions = kind.predict(_perfect(labels, 24)[:, :20])  # a trimmed batch is re-padded
    assert predictions.shape == (labels.shape[0], 24, 2)
    assert kind.metrics(_perfect(labels, 24), labels) == {"exact_match": 1.0, "f1": 1.0}
    answers = kind.decode_encoded(_perfect(labels, 24), "train")
    for row, answer in enumerate(answers):
        assert answer["text"] == frame.answers[row]["text"][0]
        assert frame.context[row][answer["start"]:answer["end"]] == answer["text"]


def test_answers_as_two_columns_and_unanswerable_questions(encoder: TextInputs) -> None:
    frame = pd.DataFrame({"question": ["who won ?", "who lost ?", "who drew ?"],
                          "context": ["ada won the race", "nobody lost", "bob drew"],
                          "text": [["ada"], [], ["bob"]], "start": [[0], [], [0]]})
    with pytest.raises(DataError, match=r"tasks\.qa\.label: row 1 .*unanswerable: true"):
        strict = _kind(label=["text", "start"], max_length=16, stride=2)
        strict.encode_inputs(frame, encoder, "train")
        strict.encode(frame, "train")
    kind = _kind(label=["text", "start"], max_length=16, stride=2, unanswerable=True)
    kind.encode_inputs(frame, encoder, "validation")
    labels = kind.encode(frame, "validation")
    assert labels[1, :2].tolist() == [0, 0]  # 'no answer' is the first token
    assert kind.metrics(_perfect(labels, 16), labels) == {"exact_match": 1.0, "f1": 1.0}
    assert kind.decode_encoded(_perfect(labels, 16), "validation")[1] == {
        "text": "", "start": None, "end": None}


def test_bad_answers_and_windows_name_the_field(encoder: TextInputs) -> None:
    frame = pd.DataFrame({"question": ["who ?"], "context": ["ada won"],
                          "answers": [{"text": ["won"], "answer_start": [40]}]})
    kind = _kind(max_length=16, stride=2)
    kind.encode_inputs(frame, encoder, "train")
    with pytest.raises(DataError, match=r"tasks\.qa\.label: row 0 of the train split: the "
                       r"answer 'won' at character 40 lies outside its context"):
        kind.encode(frame, "train")
    frame.at[0, "answers"] = {"text": ["won"], "answer_start": [1]}
    with pytest.raises(DataError, match=r"does not match the context at answer_start 1, which "
                       r"reads 'da '"):
        kind.encode(frame, "train")
    with pytest.raises(DataError, match=r"tasks\.qa\.options\.stride: .*lower options.stride"):
        _kind(max_length=16, stride=12).encode_inputs(frame, encoder, "train")
    frame.at[0, "answers"] = "won"
    with pytest.raises(DataError, match=r"tasks\.qa\.label: row 0 .*give SQuAD answers"):
        _kind(max_length=16, stride=2).fit(frame)


def _qa_and_sentiment_config(sentiment: Path, qa: pd.DataFrame, tiny_bert: Path,
                             sampler: str, balancer: str) -> object:
    return load_config({
        "tasks": [
            {"name": "qa", "kind": "extractive_qa", "input": ["question", "context"],
             "label": "answers", "options": {"max_length": 32, "stride": 8}, "data": qa},
            {"name": "sentiment", "kind": "classification", "input": "sentence",
             "label": "label", "data": {"path": str(sentiment)}},
        ],
        "model": {"backbone": {"type": "hf", "name": str(tiny_bert), "max_length": 24}},
        "sampler": sampler,
        "balancer": balancer,
        "train": {"max_steps": 4, "batch_size": 8, "eval_every": 4, "progress": False,
                  "callbacks": [], "lr": 5e-3},
        "baselines": "none",
    })


@pytest.mark.parametrize(("sampler", "balancer"), [("temperature", "ew"), ("all", "pcgrad")])
def test_qa_trains_next_to_classification_and_predicts_answers(
        tmp_path: Path, tiny_bert: Path, text_files: dict[str, Path], sampler: str,
        balancer: str) -> None:
    """pcgrad needs every task at every step, so it runs with the `all` sampler."""
    config = _qa_and_sentiment_config(text_files["sentiment"], _rows(40), tiny_bert, sampler,
                                      balancer)
    results = Trainer(config, tmp_path / "run").fit()
    assert set(results["tasks"]["qa"]["metrics"]) == {"exact_match", "f1"}
    assert 0.0 <= results["tasks"]["qa"]["value"] <= 1.0
    rows = _rows(3, seed=5)[["question", "context"]].assign(sentence="the plot was good")
    predicted = load(tmp_path / "run").predict(rows, ["qa", "sentiment"])
    for context, answer in zip(rows.context, predicted["qa"], strict=True):
        assert set(answer) == {"text", "start", "end"}
        assert context[answer["start"]:answer["end"]] == answer["text"]
    assert set(predicted["sentiment"]) <= {"pos", "neg"}
    lines = tmp_path / "rows.jsonl"
    rows.to_json(lines, orient="records", lines=True)
    printed = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), "--task", "qa",
                                       "--input", str(lines)])
    assert printed.exit_code == 0, printed.output
    first = json.loads(printed.stdout.splitlines()[0])
    assert first["qa"] == predicted["qa"][0]
