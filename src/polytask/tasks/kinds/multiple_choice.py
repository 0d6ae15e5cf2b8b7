"""Multiple choice: one shared scorer over (context, choice) pairs and a softmax over the
choices of each row (SWAG, HellaSwag, COPA, PIQA, ARC, RACE).

Inputs are B x C x L token tensors: row b's choice c is the pair (context, choice) tokenized
as one sequence. Rows with fewer choices than the split's most are padded with empty
sequences (no token), which the encoder skips. A label row is `[answer index, number of
choices]`; the number masks the padding choices out of the softmax, the loss and accuracy.
"""

from __future__ import annotations

from typing import Any, Literal

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

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


def _choice_mask(scores: Tensor, counts: Tensor) -> Tensor:
    """`scores` (B x C) with the choices past each row's count set to the lowest value."""
    padding = torch.arange(scores.shape[1], device=scores.device)[None, :] >= counts[:, None]
    return scores.masked_fill(padding, torch.finfo(scores.dtype).min)


def _tokenize_choices(tokenizer: Any, contexts: list[str], choices: list[list[str]],
                      length: int) -> Encoded:
    """B x C x L pairs (context, choice), C = the most choices of a row; padding choices
    hold no token (all-zero attention mask)."""
    width = max((len(c) for c in choices), default=1)
    firsts = [context for context, row in zip(contexts, choices, strict=True) for _ in row]
    seconds = [choice for row in choices for choice in row]
    out = tokenizer(firsts, seconds, truncation=True, max_length=length, padding="max_length",
                    return_tensors="pt")
    slots = torch.tensor([b * width + c for b, row in enumerate(choices)
                          for c in range(len(row))], dtype=torch.long)
    encoded = {}
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        if key in out:
            grid = torch.zeros((len(choices) * width, length), dtype=out[key].dtype)
            grid[slots] = out[key]
            encoded[key] = grid.unflatten(0, (len(choices), width))
    return encoded


@TASK_KINDS.register("multiple_choice", paper="SWAG: A Large-Scale Adversarial Dataset for "
                     "Grounded Commonsense Inference (Zellers et al. 2018); BERT (Devlin et al. "
                     "2019), multiple-choice head")
class MultipleChoice(TaskKind):
    """Pick one of several choices. `input: [context, choices]`, where the second column
    holds a list of choice texts per row (any number, at least one), or
    `input: [context, choice_a, choice_b, ...]`, one choice per column (empty cells in the
    last columns give a row fewer choices). `label`: the answer as a 0-based index, the
    choice's text or a letter (A = the first), as `options.answer` says."""

    class Options(BaseModel):
        """Settings of a multiple_choice task (`options:`)."""

        model_config = ConfigDict(extra="forbid")

        answer: Literal["index", "text", "letter"] = Field(
            "index", description="How the label column names the right choice: its 0-based "
            "index (0, 1, ...), its text, or its letter (A, B, ... as in RACE or ARC).")
        max_length: int | None = Field(
            None, ge=4, description="Tokens per (context, choice) pair; the backbone's "
            "max_length if omitted.")

    default_metric = "accuracy"
    metric_names = ("accuracy",)
    owns_inputs = True

    def __init__(self, task: Task) -> None:
        super().__init__(task)
        if len(task.input_columns) < 2:
            raise ConfigError(f"tasks.{task.name}.input: multiple_choice reads a context column "
                              "and the choices ([context, choices] with a list per row, or "
                              f"[context, choice_a, choice_b, ...]); got {task.input_columns}")
        self._choices: dict[str, list[list[str]]] = {}
        self._last_split: str | None = None

    @property
    def num_outputs(self) -> int:
        return 1  # one score per (context, choice) pair

    # -- inputs -------------------------------------------------------------------------
    def _row_choices(self, frame: pd.DataFrame, split: str) -> list[list[str]]:
        """Each row's choice texts (empty cells dropped); zero choices is an error."""
        columns = self.task.input_columns[1:]
        rows = []
        for i, cells in enumerate(zip(*(frame[c].tolist() for c in columns), strict=True)):
            where = f"tasks.{self.task.name}.input: row {i} of the {split} split"
            if len(columns) == 1 and isinstance(cells[0], str):
                raise DataError(f"{where} holds {cells[0]!r} in column {columns[0]!r}; a single "
                                "choices column holds a list of choices per row. Name one "
                                "column per choice otherwise")
            values = list(cells[0]) if len(columns) == 1 and is_sequence(cells[0]) else cells
            present = [not self._missing(v) for v in values]
            if len(columns) > 1 and present != sorted(present, reverse=True):
                raise DataError(f"{where} has an empty choice before a filled one in columns "
                                f"{columns}; leave only the last choice columns empty, so each "
                                "answer index keeps pointing at its column")
            row = [str(v) for v, keep in zip(values, present, strict=True) if keep]
            if not row:
                raise DataError(f"{where} has no choices (column(s) {columns} are empty); give "
                                "every row at least one choice")
            rows.append(row)
        return rows

    def encode_inputs(self, frame: pd.DataFrame, encoder: Any, split: str) -> Encoded:
        tokenizer = tokenizer_of(encoder, self.task)
        contexts = ["" if self._missing(v) else str(v)
                    for v in frame[self.task.input_columns[0]].tolist()]
        choices = self._row_choices(frame, split)
        length = self.options.max_length or encoder.max_length
        key = content_hash(encoder.name, length, contexts, choices)
        self._choices[split], self._last_split = choices, split
        return cached_tensors("choices", key, lambda: _tokenize_choices(
            tokenizer, contexts, choices, length))

    # -- labels -------------------------------------------------------------------------
    def _answer_index(self, value: Any, choices: list[str], where: str) -> int:
        if self._missing(value):
            return IGNORE
        way = self.options.answer
        if way == "text":
            index = choices.index(str(value)) if str(value) in choices else -1
        elif way == "letter":
            text = str(value).strip().upper()
            index = ord(text) - ord("A") if len(text) == 1 and text.isalpha() else -1
        else:
            number = str(value).strip()
            number = number[:-2] if number.endswith(".0") else number
            index = int(number) if number.isdigit() else -1
        if not 0 <= index < len(choices):
            raise DataError(f"{where} holds {value!r}, which is not one of its {len(choices)} "
                            f"choices {choices} (options.answer: {way}); give the right "
                            "choice's 0-based index, or set options.answer to text or letter")
        return index

    def fit(self, train: pd.DataFrame) -> None:
        if all(self._missing(v) for v in self._column(train).tolist()):
            raise self._no_labelled_row()

    def encode(self, frame: pd.DataFrame, split: str) -> Tensor:
        """`[answer index (IGNORE if unlabelled), number of choices]` per row."""
        choices = self._choices.get(split)
        if choices is None:
            raise RuntimeError(f"multiple_choice: encode_inputs must run on the {split} split "
                               "before encode")
        rows = []
        for i, (value, row) in enumerate(zip(self._column(frame).tolist(), choices,
                                             strict=True)):
            where = f"tasks.{self.task.name}.label: row {i} of the {split} split"
            rows.append([self._answer_index(value, row, where), len(row)])
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), 2)

    # -- model --------------------------------------------------------------------------
    def build_head(self, input_dim: int) -> nn.Module:
        return nn.Linear(input_dim, 1)

    def loss(self, outputs: Tensor, labels: Tensor) -> Tensor:
        return masked_cross_entropy(_choice_mask(outputs.squeeze(-1), labels[:, 1]),
                                    labels[:, 0])

    def predict(self, outputs: Tensor) -> Tensor:
        """Every choice's score (B x C); padding choices are masked where the number of
        choices is known (metrics, decoding)."""
        return outputs.squeeze(-1).float()

    def metrics(self, predictions: Tensor, labels: Tensor) -> dict[str, float]:
        labelled = labels[:, 0] != IGNORE
        if not labelled.any():
            raise ValueError("multiple_choice metrics: no labelled row to score")
        chosen = _choice_mask(predictions[labelled], labels[labelled, 1]).argmax(dim=1)
        return {"accuracy": float((chosen == labels[labelled, 0]).float().mean())}

    def decode_encoded(self, predictions: Tensor, split: str, proba: bool = False) -> list[Any]:
        """Per row, the chosen choice's text; with `proba`, `{choice: probability}`."""
        choices = self._choices[split]
        counts = torch.tensor([len(row) for row in choices], dtype=torch.long)
        scores = _choice_mask(predictions, counts)
        if proba:
            probabilities = scores.softmax(dim=1).tolist()
            return [dict(zip(row, p[:len(row)], strict=True))
                    for row, p in zip(choices, probabilities, strict=True)]
        return [row[i] for row, i in zip(choices, scores.argmax(dim=1).tolist(), strict=True)]

    def decode(self, predictions: Tensor) -> list[Any]:
        """Chosen choices of the split encoded last (scores over all of its rows)."""
        if self._last_split is None:
            raise RuntimeError("multiple_choice: nothing encoded to decode")
        return self.decode_encoded(predictions, self._last_split)
