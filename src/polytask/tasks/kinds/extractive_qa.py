"""Extractive question answering (SQuAD-style): a start/end span head over a text encoder.

Each row holds a question, a context and its answers (text plus character offset in the
context). A context longer than a window is cut into overlapping windows (the tokenizer's
`return_overflowing_tokens`, `stride` tokens shared by neighbours), so one row becomes one
or more input rows. Each window's label is `[start token, end token, window, split code]`:
the answer's token span in that window, or the first token ([CLS]) when the answer is not in
it or the question has none; `window` points into what `encode_inputs` kept of the split
(token offsets, the context, the gold answers), so predictions are mapped back to the
original text and the best span over all windows of a row is scored. Metrics are SQuAD's
exact match and F1, with the official script's answer normalisation.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from polytask.errors import ConfigError, DataError
from polytask.models.inputs import Encoded, cached_tensors, content_hash
from polytask.tasks.kinds.base import (
    IGNORE,
    TASK_KINDS,
    TaskKind,
    is_sequence,
    masked_cross_entropy,
    tokenizer_of,
)
from polytask.tasks.spec import Task

#: An answer: its text and the character offset where it starts in the context.
Answer = tuple[str, int]
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)
_SPAN_CHUNK = 64  # windows scored at once when searching the best span


# ------------------------------------------------------------------ SQuAD's metric


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_f1(prediction: str, gold: str) -> float:
    """Token-overlap F1 of two normalised answers; an empty answer (no answer) scores 1
    against an empty one and 0 against any other (the SQuAD 2.0 script)."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    same = sum((Counter(predicted) & Counter(expected)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Exact match and F1 (fractions in [0, 1]) averaged over questions, each the best over
    the question's gold answers; a question without gold answers expects no answer ("")."""
    if not predictions:
        raise ValueError("squad_metrics: no labelled question to score")
    exact, f1 = 0.0, 0.0
    for prediction, answers in zip(predictions, golds, strict=True):
        answers = list(answers) or [""]
        exact += max(float(normalize_answer(prediction) == normalize_answer(a)) for a in answers)
        f1 += max(answer_f1(prediction, a) for a in answers)
    return {"exact_match": exact / len(predictions), "f1": f1 / len(predictions)}


# ------------------------------------------------------------------ spans


def best_spans(logits: Tensor, context: Tensor, max_answer_length: int
               ) -> tuple[Tensor, Tensor, Tensor]:
    """Per window (`logits`: N x L x 2 start/end scores, `context`: N x L, True on context
    tokens) the span start <= end < start + max_answer_length inside the context with the
    highest start + end score: (scores, starts, ends); the score is -inf without one."""
    length = logits.shape[1]
    position = torch.arange(length)
    band = ((position[None, :] >= position[:, None])
            & (position[None, :] - position[:, None] < max_answer_length))
    scores, starts, ends = [], [], []
    for first in range(0, logits.shape[0], _SPAN_CHUNK):
        part, inside = logits[first:first + _SPAN_CHUNK].float(), context[first:first + _SPAN_CHUNK]
        pair = part[:, :, 0, None] + part[:, None, :, 1]
        allowed = band & inside[:, :, None] & inside[:, None, :]
        best, index = pair.masked_fill(~allowed, float("-inf")).flatten(1).max(dim=1)
        scores.append(best)
        starts.append(index // length)
        ends.append(index % length)
    if not scores:
        return torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return torch.cat(scores), torch.cat(starts), torch.cat(ends)


@dataclass
class Windows:
    """What `encode_inputs` keeps of one split: each window's row and token character
    offsets (-1 off the context), each row's context, and (after `encode`) its answers."""

    rows: Tensor  # W
    offsets: Tensor  # W x L x 2
    contexts: list[str]
    answers: list[list[Answer] | None] | None = None


@dataclass
class Prediction:
    """A predicted answer: its text and character offsets (end exclusive) in the context;
    empty with no offsets for 'no answer'."""

    text: str
    start: int | None
    end: int | None

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "start": self.start, "end": self.end}


def _windows(tokenizer: Any, questions: list[str], contexts: list[str], length: int,
             stride: int) -> Encoded:
    """Question/context windows padded to `length`, with each window's row and the
    character offsets of its context tokens (-1 elsewhere)."""
    out = tokenizer(questions, contexts, truncation="only_second", max_length=length,
                    stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                    padding="max_length", return_tensors="pt")
    offsets = out["offset_mapping"].clone()
    for window in range(offsets.shape[0]):
        outside = torch.tensor([s != 1 for s in out.sequence_ids(window)])
        offsets[window, outside] = -1
    windows = {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"],
               "offsets": offsets, "row": out["overflow_to_sample_mapping"]}
    if "token_type_ids" in out:
        windows["token_type_ids"] = out["token_type_ids"]
    return windows


# ------------------------------------------------------------------ the kind


@TASK_KINDS.register("extractive_qa", paper="SQuAD: 100,000+ Questions for Machine "
                     "Comprehension of Text (Rajpurkar et al. 2016); Know What You Don't Know: "
                     "Unanswerable Questions for SQuAD (Rajpurkar et al. 2018)")
class ExtractiveQA(TaskKind):
    """Answer spans in a context. `input: [question, context]`; `label`: one column of
    SQuAD answers (`{text: [...], answer_start: [...]}`, a list of `{text, answer_start}`,
    or one such dict), or two columns `[answer text, answer start]` (a value or a list in
    each). An empty cell is an unlabelled row; an empty answer list is 'no answer'
    (with `options.unanswerable: true`)."""

    class Options(BaseModel):
        """Settings of an extractive_qa task (`options:`)."""

        model_config = ConfigDict(extra="forbid")

        max_length: int | None = Field(
            None, ge=8, description="Tokens per window (question, context and special tokens); "
            "the backbone's max_length if omitted.")
        stride: int = Field(
            32, ge=0, description="Tokens of context shared by consecutive windows of a long "
            "context, so an answer cut by one window is whole in the next.")
        max_answer_length: int = Field(
            30, ge=1, description="The longest answer predicted, in tokens.")
        unanswerable: bool = Field(
            False, description="SQuAD 2.0: a question may have no answer (an empty answer "
            "list); 'no answer' is scored at the first token ([CLS]) and predicted when it "
            "beats the best span by more than null_threshold.")
        null_threshold: float = Field(
            0.0, description="With unanswerable: how much the best span's score (start + end "
            "logit) may trail the no-answer score before no answer is predicted.")

    level = "token"
    default_metric = "f1"
    metric_names = ("f1", "exact_match")
    owns_inputs = True

    def __init__(self, task: Task) -> None:
        super().__init__(task)
        if len(task.input_columns) != 2:
            raise ConfigError(f"tasks.{task.name}.input: extractive_qa reads two columns, "
                              f"[question, context]; got {task.input_columns}")
        if len(task.label_columns) > 2:
            raise ConfigError(f"tasks.{task.name}.label: give one column of SQuAD answers or "
                              f"two, [answer text, answer start]; got {task.label_columns}")
        self.window_length = 0  # set by `encode_inputs`: every prediction is padded to it
        self._windows: dict[str, Windows] = {}
        self._split_codes: list[str] = []  # a label's split code indexes this list
        self._last_split: str | None = None

    @property
    def num_outputs(self) -> int:
        return 2  # a start and an end score per token

    # -- answers ------------------------------------------------------------------------
    def _field(self) -> str:
        return f"tasks.{self.task.name}.label"

    def _answer_list(self, texts: Any, starts: Any, where: str) -> list[Answer]:
        texts = list(texts) if is_sequence(texts) else [texts]
        starts = list(starts) if is_sequence(starts) else [starts]
        if len(texts) != len(starts):
            raise DataError(f"{where} holds {len(texts)} answer text(s) but {len(starts)} "
                            "answer_start value(s); give one start per text")
        answers = []
        for text, start in zip(texts, starts, strict=True):
            whole = isinstance(start, Integral) or (
                isinstance(start, Real) and float(start).is_integer())
            if not isinstance(text, str) or isinstance(start, bool) or not whole:
                raise DataError(f"{where} holds the answer {text!r} at {start!r}; an answer is "
                                "a text and the character offset (an integer) where it starts "
                                "in the context")
            answers.append((text, int(start)))
        return answers

    def _record_answers(self, cell: Any, where: str) -> list[Answer]:
        """SQuAD's `{text, answer_start}` (values or lists), or a list of such dicts."""
        if isinstance(cell, dict) and {"text", "answer_start"} <= set(cell):
            return self._answer_list(cell["text"], cell["answer_start"], where)
        if is_sequence(cell) and all(isinstance(c, dict) for c in cell):
            return [a for c in cell for a in self._record_answers(c, where)]
        raise DataError(f"{where} holds {cell!r}; give SQuAD answers ({{'text': [...], "
                        "'answer_start': [...]}}), or name two label columns [answer text, "
                        "answer start]")

    def _answers(self, frame: pd.DataFrame, split: str) -> list[list[Answer] | None]:
        """Each row's answers ([] for no answer, None for an unlabelled row)."""
        columns = self.task.label_columns
        rows: list[list[Answer] | None] = []
        for i, cells in enumerate(zip(*(frame[c].tolist() for c in columns), strict=True)):
            where = f"{self._field()}: row {i} of the {split} split"
            if all(self._missing(c) for c in cells):
                rows.append(None)
            elif len(cells) == 1:
                rows.append(self._record_answers(cells[0], where))
            else:
                rows.append(self._answer_list(cells[0], cells[1], where))
            if rows[-1] == [] and not self.options.unanswerable:
                raise DataError(f"{where} has no answer; set `options: {{unanswerable: true}}` "
                                "for SQuAD 2.0-style questions without an answer, or leave the "
                                "cell empty to skip the row")
        return rows

    def _check_offsets(self, contexts: list[str], answers: list[list[Answer] | None],
                       split: str) -> None:
        """Every answer lies inside its context and is the text found at its offset."""
        context_column = self.task.input_columns[1]
        for i, (context, row) in enumerate(zip(contexts, answers, strict=True)):
            for text, start in row or []:
                where = f"{self._field()}: row {i} of the {split} split"
                if start < 0 or start + len(text) > len(context):
                    raise DataError(
                        f"{where}: the answer {text!r} at character {start} lies outside its "
                        f"context (column {context_column!r}, {len(context)} characters); "
                        "answer_start counts characters from the start of the context")
                found = context[start:start + len(text)]
                if found != text:
                    raise DataError(
                        f"{where}: the answer {text!r} does not match the context at "
                        f"answer_start {start}, which reads {found!r}; fix the offset")

    def fit(self, train: pd.DataFrame) -> None:
        if all(row is None for row in self._answers(train, "train")):
            raise self._no_labelled_row()

    # -- inputs and labels --------------------------------------------------------------
    def _texts(self, frame: pd.DataFrame, column: str, split: str) -> list[str]:
        values = frame[column].tolist()
        for i, value in enumerate(values):
            if not isinstance(value, str):
                raise DataError(f"tasks.{self.task.name}.input: row {i} of the {split} split "
                                f"holds {value!r} in column {column!r}; a question and a "
                                "context are texts")
        return values

    def _check_room(self, tokenizer: Any, questions: list[str], length: int,
                    split: str) -> None:
        """Each window has more context tokens than `stride` (else the tokenizer panics)."""
        if not questions:
            return
        special = tokenizer.num_special_tokens_to_add(pair=True)
        sizes = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
        longest = max(range(len(sizes)), key=sizes.__getitem__)
        room = length - special - sizes[longest]
        if room <= self.options.stride:
            raise DataError(
                f"tasks.{self.task.name}.options.stride: row {longest} of the {split} split "
                f"has a question of {sizes[longest]} tokens, which leaves {room} context "
                f"token(s) per window of {length}, not more than the stride "
                f"{self.options.stride}; raise options.max_length, lower options.stride, or "
                "shorten the question")

    def _split_code(self, split: str) -> int:
        if split not in self._split_codes:
            self._split_codes.append(split)
        return self._split_codes.index(split)

    def encode_inputs(self, frame: pd.DataFrame, encoder: Any, split: str) -> Encoded:
        tokenizer = tokenizer_of(encoder, self.task, offsets=True)
        question_column, context_column = self.task.input_columns
        questions = self._texts(frame, question_column, split)
        contexts = self._texts(frame, context_column, split)
        length = self.options.max_length or encoder.max_length
        self._check_room(tokenizer, questions, length, split)
        key = content_hash(encoder.name, length, self.options.stride, questions, contexts)
        windows = dict(cached_tensors("qa-windows", key, lambda: _windows(
            tokenizer, questions, contexts, length, self.options.stride)))
        self._windows[split] = Windows(windows.pop("row"), windows.pop("offsets"), contexts)
        self._split_code(split)
        self.window_length, self._last_split = length, split
        return windows

    def _window_label(self, offsets: Tensor, answers: list[Answer] | None) -> tuple[int, int]:
        """The (start, end) token of the first answer in one window; (0, 0), the first token,
        when the answer is not inside the window or there is none."""
        if answers is None:
            return IGNORE, IGNORE
        if not answers:
            return 0, 0
        text, first = answers[0]
        last = first + len(text)
        inside = (offsets[:, 0] >= 0).nonzero().flatten()
        if not len(inside) or offsets[inside[0], 0] > first or offsets[inside[-1], 1] < last:
            return 0, 0
        start = int(inside[offsets[inside, 0] <= first][-1])
        end = int(inside[offsets[inside, 1] >= last][0])
        return start, end

    def encode(self, frame: pd.DataFrame, split: str) -> Tensor:
        """One row per window (see the module's docstring)."""
        table = self._windows.get(split)
        if table is None:
            raise RuntimeError(f"extractive_qa: encode_inputs must run on the {split} split "
                               "before encode")
        table.answers = self._answers(frame, split)
        self._check_offsets(table.contexts, table.answers, split)
        code = self._split_code(split)
        labels = torch.empty((len(table.rows), 4), dtype=torch.long)
        for window, row in enumerate(table.rows.tolist()):
            start, end = self._window_label(table.offsets[window], table.answers[row])
            labels[window] = torch.tensor([start, end, window, code])
        return labels

    # -- model --------------------------------------------------------------------------
    def loss(self, outputs: Tensor, labels: Tensor) -> Tensor:
        start, end = outputs.unbind(dim=-1)
        return (masked_cross_entropy(start, labels[:, 0])
                + masked_cross_entropy(end, labels[:, 1])) / 2

    def predict(self, outputs: Tensor) -> Tensor:
        """The start/end scores, padded to the window length with -inf (batches are trimmed
        to their longest window, and predictions of a split are concatenated)."""
        missing = max(self.window_length - outputs.shape[1], 0)
        return F.pad(outputs.float(), (0, 0, 0, missing), value=float("-inf"))

    def _answers_of_rows(self, predictions: Tensor, windows: Tensor, table: Windows
                         ) -> dict[int, Prediction]:
        """The best answer of every row that has windows among `windows`."""
        offsets = table.offsets[windows]
        scores, starts, ends = best_spans(predictions, offsets[..., 0] >= 0,
                                          self.options.max_answer_length)
        nulls = predictions[:, 0, 0] + predictions[:, 0, 1]
        best: dict[int, tuple[float, int]] = {}  # row -> (span score, index into windows)
        null: dict[int, float] = {}
        for i, row in enumerate(table.rows[windows].tolist()):
            if row not in best or scores[i] > best[row][0]:
                best[row] = (float(scores[i]), i)
            null[row] = min(null.get(row, float("inf")), float(nulls[i]))
        answers = {}
        for row, (score, i) in best.items():
            no_answer = score == float("-inf") or (
                self.options.unanswerable and null[row] > score + self.options.null_threshold)
            if no_answer:
                answers[row] = Prediction("", None, None)
            else:
                first, last = int(offsets[i, starts[i], 0]), int(offsets[i, ends[i], 1])
                answers[row] = Prediction(table.contexts[row][first:last], first, last)
        return answers

    def metrics(self, predictions: Tensor, labels: Tensor) -> dict[str, float]:
        labelled = labels[:, 0] != IGNORE
        predicted: list[str] = []
        golds: list[list[str]] = []
        for code in labels[labelled, 3].unique().tolist():
            chosen = labelled & (labels[:, 3] == code)
            table = self._windows[self._split_codes[code]]
            assert table.answers is not None
            for row, answer in self._answers_of_rows(predictions[chosen], labels[chosen, 2],
                                                     table).items():
                predicted.append(answer.text)
                golds.append([text for text, _ in table.answers[row] or []])
        return squad_metrics(predicted, golds)

    def decode_encoded(self, predictions: Tensor, split: str, proba: bool = False) -> list[Any]:
        """Per row of the frame last encoded for `split`, `{text, start, end}`: the answer
        and its character offsets in the context (end exclusive; None with no answer)."""
        del proba  # an answer has no label distribution to show
        table = self._windows[split]
        answers = self._answers_of_rows(predictions, torch.arange(len(table.rows)), table)
        return [answers[row].as_dict() for row in range(len(table.contexts))]

    def decode(self, predictions: Tensor) -> list[Any]:
        """Answers of the split encoded last (predictions over all of its windows)."""
        if self._last_split is None:
            raise RuntimeError("extractive_qa: nothing encoded to decode")
        return self.decode_encoded(predictions, self._last_split)
