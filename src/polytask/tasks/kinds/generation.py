"""Text-to-text generation: a prompt template in, a target template out, on a generative
backbone (a causal LM or an encoder-decoder model, `polytask.models.generative`).

The loss is the cross-entropy of the target tokens only (every prompt position is masked).
A task with a `verbalizer` is classification cast as generation: it trains on the gold
label's word and is scored by rank classification (the summed log-likelihood of each
label's target; the best one is the prediction), so its accuracy needs no decoding. A task
without one is evaluated on its greedy continuation: exact match, ROUGE-L, BLEU and chrF.

Templates are `str.format`-style with named fields only: `{text}` is the row's `text`
column and `{label}` the task's label (its verbalizer word, if any). They are filled in by
substitution, never evaluated.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from polytask.errors import ConfigError, DataError, TrainingError
from polytask.models.generative import GENERATION, RANK, GenerativeInputs
from polytask.tasks import metrics as M
from polytask.tasks.kinds.base import (
    IGNORE,
    TASK_KINDS,
    TaskKind,
    is_missing,
    masked_cross_entropy,
    shown,
)

#: The template field that stands for the task's label (verbalised, with a verbalizer).
LABEL_FIELD = "label"
TEXT_METRICS = ("rougeL", "exact_match", "bleu", "chrf")
RANK_METRICS = ("accuracy", "macro_f1", "mcc", "f1", "f1_accuracy")


class GenerationOptions(BaseModel):
    """The `options:` of a generation task."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(
        description="The model's input, with {column} fields filled from each row, e.g. "
        "'summarize: {text}' (a T5-style task prefix) or 'Review: {text}\\nSentiment:'. Named "
        "fields only; write {{ and }} for literal braces.")
    target: str = Field(
        "{label}", description="What the model learns to produce; {label} is the task's label "
        "column (its verbalizer word, with a verbalizer), other {column} fields are columns. "
        "For a causal LM, start it with a space when the prompt ends with a word or colon: "
        "' {label}'.")
    demonstrations: int = Field(
        0, ge=0, description="k training examples (prompt + target, drawn once with seed 0) "
        "put before every prompt: k-shot in-context demonstrations.")
    separator: str = Field(
        "\n\n", description="Text between the demonstrations and the prompt.")
    verbalizer: dict[str, str] | None = Field(
        None, description="Classification as generation: {label: word}. The task trains on "
        "its label's word and predicts the label whose word (target) is most likely given the "
        "prompt (rank classification): accuracy needs no decoding.")
    max_new_tokens: int = Field(
        32, gt=0, description="Most tokens generated at evaluation and `predict`; targets "
        "are cut to this many tokens (end token included) for training.")
    truncation: Literal["left", "right"] = Field(
        "left", description="Which side of a prompt longer than model.backbone.max_length "
        "tokens is cut: left keeps its end (the cue right before the answer), right keeps "
        "its beginning.")


@dataclass(frozen=True)
class Template:
    """A parsed template: literal text and named fields, filled in by substitution."""

    text: str
    pieces: tuple[tuple[str, str | None], ...]  # (literal text, field name or None)

    @classmethod
    def parse(cls, text: str, where: str) -> Template:
        """ConfigError naming `where` for a positional field, an attribute or index access,
        a conversion or format spec, or an unbalanced brace."""
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as error:
            raise ConfigError(f"{where}: {text!r} is not a valid template ({error}); write "
                              "{{ and }} for literal braces") from None
        pieces = []
        for literal, field, spec, conversion in parsed:
            if field is not None:
                bad = (not field or field.isdigit() or any(c in field for c in ".[]")
                       or spec or conversion)
                if bad:
                    raise ConfigError(
                        f"{where}: field {{{field}{'!' + conversion if conversion else ''}"
                        f"{':' + spec if spec else ''}}} in {text!r} is not a plain named "
                        "field; write {column} with a column name only (no positions, "
                        "attributes, indices, conversions or format specs)")
            pieces.append((literal, field))
        return cls(text, tuple(pieces))

    @property
    def fields(self) -> list[str]:
        return list(dict.fromkeys(f for _, f in self.pieces if f is not None))

    def render(self, values: Mapping[str, str]) -> str:
        return "".join(literal + (values[f] if f is not None else "")
                       for literal, f in self.pieces)


def _special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The tokens the tokenizer adds before and after a text (BOS; EOS for T5)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start], full[start + len(plain):]
    return [], []


def _padded(rows: Sequence[Sequence[int]], fill: int, width: int | None = None,
            left: bool = False) -> Tensor:
    """Token lists as an N x width long tensor, padded with `fill` (on the left if asked)."""
    width = max([len(r) for r in rows] + [1]) if width is None else width
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            place = out[i, width - len(row):] if left else out[i, :len(row)]
            place.copy_(torch.tensor(list(row), dtype=torch.long))
    return out


def _mask(rows: Sequence[Sequence[int]], width: int, left: bool = False) -> Tensor:
    return _padded([[1] * len(r) for r in rows], 0, width, left)


@TASK_KINDS.register("generation", paper="Text-to-text multi-task training (Raffel et al. "
                     "2020, T5); rank classification of verbalised labels (Brown et al. 2020; "
                     "Sanh et al. 2022, T0)")
class Generation(TaskKind):
    """Text-to-text: a prompt template in, a target template out; loss on target tokens."""

    level: ClassVar[str] = GENERATION
    generative: ClassVar[bool] = True
    serves_unseen_tasks: ClassVar[bool] = True  # the LM head is every task's
    owns_inputs: ClassVar[bool] = True
    default_metric = "rougeL"
    metric_names = TEXT_METRICS + RANK_METRICS
    Options: ClassVar[type[BaseModel]] = GenerationOptions

    def __init__(self, task: Any) -> None:
        super().__init__(task)
        where = f"tasks.{task.name}.options"
        self.prompt = Template.parse(self.options.prompt, f"{where}.prompt")
        self.target = Template.parse(self.options.target, f"{where}.target")
        if LABEL_FIELD in self.prompt.fields:
            raise ConfigError(f"{where}.prompt: reads {{{LABEL_FIELD}}}, the answer the task "
                              "learns to produce; put it in `target` only")
        self.verbalizer: dict[str, str] | None = self.options.verbalizer
        if self.verbalizer is not None:
            if LABEL_FIELD not in self.target.fields:
                raise ConfigError(f"{where}.target: {self.options.target!r} has no {{label}} "
                                  "field, where the verbalizer's words go; add it")
            self.level = RANK  # type: ignore[misc]  # a kind's level, set per task here
        self._choose_metric(task.metric)
        self.demonstrations: list[str] = []
        self._labels: dict[str, Tensor] = {}  # split -> labels, from `encode_inputs`
        self._tokenizer: Any = None

    def _choose_metric(self, chosen: str | None) -> None:
        ranked = self.verbalizer is not None
        allowed = RANK_METRICS if ranked else TEXT_METRICS
        self.metric = chosen or allowed[0]
        if self.metric not in allowed:
            what = ("a task with a verbalizer is scored by rank classification" if ranked
                    else "a task without a verbalizer is scored on generated text")
            raise ConfigError(f"tasks.{self.task.name}.metric: {self.metric!r}: {what}; use "
                              f"one of {', '.join(allowed)}")
        self.higher_is_better = M.higher_is_better(self.metric)

    # -- labels -----------------------------------------------------------------------
    def fit(self, train: pd.DataFrame) -> None:
        self._check_fields(train, "train", targets=True)
        if self.verbalizer is not None:
            self.label_names = self._verbalised_labels()
        values = [self._values(row) for row in train.to_dict("records")]
        labelled = [v for v in values if v is not None]
        if not labelled:
            raise self._no_labelled_row()
        self._check_labels(values, "train")
        k = min(self.options.demonstrations, len(labelled))
        chosen = np.random.default_rng(0).choice(len(labelled), size=k, replace=False)
        self.demonstrations = [self.prompt.render(labelled[i]) + self.target.render(labelled[i])
                               for i in sorted(chosen.tolist())]

    def _verbalised_labels(self) -> list[str]:
        assert self.verbalizer is not None
        names = list(self.task.labels) if self.task.labels is not None else list(self.verbalizer)
        unworded = [n for n in names if n not in self.verbalizer]
        if unworded or len(names) < 2:
            raise ConfigError(
                f"tasks.{self.task.name}.options.verbalizer: give a word for each of at least 2 "
                f"labels; {unworded or names} {'have none' if unworded else 'is too few'}. The "
                f"labels are {shown(names)}.")
        return names

    def _check_fields(self, frame: pd.DataFrame, split: str, targets: bool) -> None:
        """Every template field names a column of `frame` (`targets`: the target's too)."""
        templates = [("prompt", self.prompt)] + ([("target", self.target)] if targets else [])
        for option, template in templates:
            for field in template.fields:
                column = self.task.label_columns[0] if field == LABEL_FIELD else field
                if column not in frame.columns:
                    raise DataError(
                        f"tasks.{self.task.name}.options.{option}: field {{{field}}} names no "
                        f"column of the {split} split (columns: {list(frame.columns)}); fix the "
                        "template or rename the column (data.rename)")

    def _values(self, row: Mapping[str, Any], targets: bool = True) -> dict[str, str] | None:
        """The template fields of one row as text; None when a target field is missing (an
        unlabelled row). Without `targets`, only the prompt's fields."""
        values: dict[str, str] = {}
        for field in self.prompt.fields:
            value = row[field]
            values[field] = "" if is_missing(value) else str(value)
        if not targets:
            return values
        for field in self.target.fields:
            raw = row[self.task.label_columns[0]] if field == LABEL_FIELD else row[field]
            if self._missing(raw):
                return None
            values[field] = self._label_name(raw) if field == LABEL_FIELD else str(raw)
        if self.verbalizer is not None and LABEL_FIELD in values:
            values[LABEL_FIELD] = self.verbalizer.get(values[LABEL_FIELD], values[LABEL_FIELD])
        return values

    def _gold_label(self, row: Mapping[str, Any]) -> str | None:
        raw = row[self.task.label_columns[0]]
        return None if self._missing(raw) else self._label_name(raw)

    def _check_labels(self, values: Sequence[dict[str, str] | None], split: str) -> None:
        """With a verbalizer, every label is one of its labels."""
        if self.verbalizer is None:
            return
        words = {self.verbalizer[n]: n for n in self.label_names or []}
        for row in values:
            if row is not None and row.get(LABEL_FIELD) not in words:
                raise DataError(
                    f"tasks.{self.task.name}: label {row.get(LABEL_FIELD)!r} in the {split} "
                    f"split has no word in options.verbalizer (labels: "
                    f"{shown(self.label_names)}); add it, or map it with `label_map`.")

    def state(self) -> dict[str, Any]:
        return {"labels": self.label_names, "demonstrations": self.demonstrations}

    def load_state(self, state: dict[str, Any]) -> None:
        self.label_names = state["labels"]
        self.demonstrations = state.get("demonstrations", [])

    # -- inputs -----------------------------------------------------------------------
    def encode_inputs(self, frame: pd.DataFrame, encoder: Any, split: str) -> dict[str, Tensor]:
        """Prompt and target tokens laid out for the backbone (see
        `polytask.models.generative`); the labels are kept for `encode`. A split without the
        target's columns (new rows to predict) gets prompts only."""
        if not isinstance(encoder, GenerativeInputs):
            raise ConfigError(f"tasks.{self.task.name}: kind 'generation' needs a generative "
                              "backbone (a causal LM or an encoder-decoder model, type: hf)")
        self._tokenizer = encoder.tokenizer
        self._check_fields(frame, split, targets=False)
        label_column = self.task.label_columns[0]
        has_targets = all((label_column if f == LABEL_FIELD else f) in frame.columns
                          for f in self.target.fields)
        rows = frame.to_dict("records")
        values = [self._values(r, has_targets) if has_targets else None for r in rows]
        if has_targets:
            self._check_labels(values, split)
        self._report_stripped(split)
        prefix = "".join(d + self.options.separator for d in self.demonstrations)
        prompts = [prefix + self.prompt.render(self._values(r, targets=False) or {})
                   for r in rows]
        layout = _Layout(encoder, self.options.max_new_tokens, self.options.truncation)
        prompt_ids = layout.prompts(prompts)
        targets = [layout.target(self.target.render(v)) if v is not None else None
                   for v in values]
        gold = [IGNORE] * len(rows)
        inputs: dict[str, Tensor]
        if self.verbalizer is not None:
            candidates = [layout.candidates(self._candidate_texts(r)) for r in rows]
            index = {name: i for i, name in enumerate(self.label_names or [])}
            gold = [index[g] if v is not None and (g := self._gold_label(r)) is not None
                    else IGNORE for r, v in zip(rows, values, strict=True)]
            inputs = layout.encode(prompt_ids, targets, candidates)
        else:
            inputs = layout.encode(prompt_ids, targets)
        self._labels[split] = layout.labels(prompt_ids, targets, gold)
        return inputs

    def _candidate_texts(self, row: Mapping[str, Any]) -> list[str]:
        """The target of `row` for each label, in label order (rank classification)."""
        assert self.verbalizer is not None
        prompt_values = self._values(row, targets=False) or {}
        out = []
        for name in self.label_names or []:
            values = dict(prompt_values)
            for field in self.target.fields:
                values[field] = (self.verbalizer[name] if field == LABEL_FIELD
                                 else "" if is_missing(row.get(field)) else str(row.get(field)))
            out.append(self.target.render(values))
        return out

    def encode(self, frame: pd.DataFrame, split: str) -> Tensor:
        """Labels of the split `encode_inputs` just laid out: N x 2 x W, row 0 the target
        token of each position (IGNORE elsewhere), row 1 the gold label id at position 0
        (rank classification; IGNORE otherwise)."""
        if split not in self._labels:
            raise DataError(f"tasks.{self.task.name}: the {split} split's inputs were not "
                            "encoded; a generation task's inputs are built by the task itself")
        return self._labels[split]

    # -- model ------------------------------------------------------------------------
    def build_head(self, input_dim: int) -> nn.Module:
        """None of its own: the backbone's LM head, shared by every generation task."""
        del input_dim
        return nn.Identity()

    def loss(self, outputs: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy of the target tokens: logits (B x L x V) against labels row 0."""
        if outputs.dim() != 3 or not outputs.is_floating_point():
            raise self._not_logits(outputs)
        width = min(outputs.shape[1], labels.shape[2])  # past either: padding, no label
        return masked_cross_entropy(outputs[:, :width], labels[:, 0, :width])

    def _not_logits(self, outputs: Tensor) -> TrainingError:
        return TrainingError(
            f"tasks.{self.task.name}: the loss needs teacher-forced logits (B x L x V), got a "
            f"{tuple(outputs.shape)} {outputs.dtype} tensor: the model ran inside "
            "polytask.models.generative.decoding(), which generates instead; compute losses "
            "outside it")

    def predict(self, outputs: Tensor) -> Tensor:
        """Generated token ids (generation) or the best candidate's label id (rank)."""
        if outputs.dim() != 2 or (self.level == GENERATION and outputs.is_floating_point()):
            raise TrainingError(
                f"tasks.{self.task.name}: predictions need the model to decode (generate text "
                "or score the label candidates): run it inside "
                f"polytask.models.generative.decoding(model); got {tuple(outputs.shape)}")
        return outputs.argmax(dim=-1) if self.level == RANK else outputs

    def metrics(self, predictions: Tensor, labels: Tensor) -> dict[str, float]:
        if self.level == RANK:
            gold = labels[:, 1, 0]
            keep = gold != IGNORE
            return M.classification_metrics(predictions[keep].numpy(), gold[keep].numpy(),
                                            len(self.label_names or []))
        references = self._texts(labels[:, 0, :])
        keep = [i for i, row in enumerate(labels[:, 0, :]) if bool((row != IGNORE).any())]
        generated = self._texts(predictions)
        return M.generation_metrics([generated[i] for i in keep], [references[i] for i in keep])

    def _texts(self, ids: Tensor) -> list[str]:
        """Token id rows as text: IGNORE positions and special tokens dropped."""
        if self._tokenizer is None:
            raise TrainingError(f"tasks.{self.task.name}: no tokenizer yet; encode the inputs "
                                "(encode_inputs) before decoding predictions")
        return [self._tokenizer.decode([t for t in row if t != IGNORE],
                                       skip_special_tokens=True).strip()
                for row in ids.tolist()]

    def decode(self, predictions: Tensor) -> list[Any]:
        if self.level == RANK:
            names = self.label_names or []
            return [names[i] for i in predictions.tolist()]
        return self._texts(predictions)

    def probabilities(self, outputs: Tensor) -> list[Any]:
        """Rank classification: the softmax of the label candidates' log-likelihoods;
        generation: the generated text."""
        if self.level == RANK:
            self.predict(outputs)  # checks that the model decoded
            return self._label_probabilities(outputs.softmax(dim=-1))
        return self.decode(self.predict(outputs))


class _Layout:
    """Token lists -> the tensors a generative backbone reads (causal LM or
    encoder-decoder), for one split."""

    def __init__(self, encoder: GenerativeInputs, max_new_tokens: int, truncation: str) -> None:
        self.tokenizer = encoder.tokenizer
        self.encoder_decoder = encoder.is_encoder_decoder
        self.max_length = encoder.max_length
        self.max_new_tokens = max_new_tokens
        self.truncation = truncation
        self.pad = int(self.tokenizer.pad_token_id)
        self.eos = self.tokenizer.eos_token_id
        self.start = encoder.decoder_start_id if encoder.decoder_start_id is not None else self.pad
        self.before, self.after = _special_tokens(self.tokenizer)
        if not self.encoder_decoder:  # a causal LM's target follows the prompt directly
            self.after = []

    def _tokens(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(ids) for ids in
                self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def prompts(self, texts: Sequence[str]) -> list[list[int]]:
        """Each prompt's tokens with the model's special tokens, cut to max_length."""
        room = max(self.max_length - len(self.before) - len(self.after), 1)
        out = []
        for ids in self._tokens(texts):
            if len(ids) > room:
                ids = ids[len(ids) - room:] if self.truncation == "left" else ids[:room]
            out.append(self.before + ids + self.after)
        return out

    def _ended(self, ids: list[int]) -> list[int]:
        return ids + ([self.eos] if self.eos is not None else [])

    def target(self, text: str) -> list[int]:
        """A target's tokens and the end token, cut to max_new_tokens in all."""
        keep = self.max_new_tokens - (1 if self.eos is not None else 0)
        return self._ended(self._tokens([text])[0][:max(keep, 0)])

    def candidates(self, texts: Sequence[str]) -> list[list[int]]:
        """Each label's target of one row, uncut, with the end token."""
        return [self._ended(ids) for ids in self._tokens(texts)]

    def encode(self, prompts: list[list[int]], targets: Sequence[list[int] | None],
               candidates: list[list[list[int]]] | None = None) -> dict[str, Tensor]:
        new_tokens = torch.full((len(prompts),), self.max_new_tokens, dtype=torch.long)
        inputs: dict[str, Tensor]
        if self.encoder_decoder:
            width = max(len(p) for p in prompts) if prompts else 1
            shifted = [[self.start, *t[:-1]] if t else [self.start] for t in targets]
            decoder_width = max([len(s) for s in shifted] + [1])
            inputs = {"input_ids": _padded(prompts, self.pad, width),
                      "attention_mask": _mask(prompts, width),
                      "decoder_input_ids": _padded(shifted, self.pad, decoder_width),
                      "decoder_attention_mask": _mask(shifted, decoder_width)}
        else:
            joined = [p + (t or []) for p, t in zip(prompts, targets, strict=True)]
            width = max([len(j) for j in joined] + [1])
            prompt_width = max([len(p) for p in prompts] + [1])
            inputs = {"input_ids": _padded(joined, self.pad, width),
                      "attention_mask": _mask(joined, width),
                      "prompt_ids": _padded(prompts, self.pad, prompt_width, left=True),
                      "prompt_mask": _mask(prompts, prompt_width, left=True)}
        inputs["new_tokens"] = new_tokens
        if candidates is not None:
            inputs.update(self._candidate_tensors(candidates))
        return inputs

    def _candidate_tensors(self, candidates: list[list[list[int]]]) -> dict[str, Tensor]:
        count = len(candidates[0]) if candidates else 0
        width = max([len(c) for row in candidates for c in row] + [1])
        ids = torch.full((len(candidates), count, width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(candidates), count, width), dtype=torch.long)
        for i, row in enumerate(candidates):
            ids[i] = _padded(row, self.pad, width)
            mask[i] = _mask(row, width)
        return {"candidate_ids": ids, "candidate_mask": mask}

    def labels(self, prompts: list[list[int]], targets: Sequence[list[int] | None],
               gold: Sequence[int]) -> Tensor:
        """N x 2 x W: row 0 the token each position must predict (causal LM: the next
        token, over the target only; encoder-decoder: the target), row 1 the gold label id
        at position 0."""
        if self.encoder_decoder:
            starts = [0] * len(prompts)
            width = max([len(t or []) for t in targets] + [1])
        else:  # logits at position i predict token i + 1
            starts = [len(p) - 1 for p in prompts]
            width = max([len(p) + len(t or []) for p, t in zip(prompts, targets, strict=True)]
                        + [1])
        labels = torch.full((len(prompts), 2, width), IGNORE, dtype=torch.long)
        for i, (start, target) in enumerate(zip(starts, targets, strict=True)):
            if target:
                labels[i, 0, start:start + len(target)] = torch.tensor(target)
        labels[:, 1, 0] = torch.tensor(list(gold), dtype=torch.long)
        return labels
