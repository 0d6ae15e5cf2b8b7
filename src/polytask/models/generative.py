"""Generative backbones: a Hugging Face causal LM (decoder-only) or encoder-decoder model.

`GenerativeBackbone` wraps the whole language model, LM head included, so every generation
task of a run shares that one head (a generation task's own head is the identity). What it
returns depends on the level the task's kind asks for:

- `"generation"` / `"rank"` (text-to-text tasks, see `polytask.tasks.kinds.generation`):
  teacher-forced next-token logits, B x L x V, for the loss. Inside `decoding(model)` (how
  evaluation and `predict` run it) a `"generation"` task gets its greedy continuation
  instead (B x N token ids, IGNORE after the end), and a `"rank"` task the summed
  log-likelihood of each candidate target (B x C), for rank classification.
- `"sequence"` / `"token"` (encoder kinds such as classification): the encoder's features
  (an encoder-decoder's encoder, or the decoder-only model's last hidden states), mean-pooled
  for `"sequence"`, so encoder kinds train next to generation tasks in one run.

The inputs a generation kind builds (`encode_inputs`) are, per row:
`input_ids`/`attention_mask` (causal LM: prompt + target; encoder-decoder: the prompt),
`prompt_ids`/`prompt_mask` (causal LM: the prompt alone, left-padded, for decoding),
`decoder_input_ids`/`decoder_attention_mask` (encoder-decoder: the target shifted right),
`new_tokens` (how many tokens to generate) and, for rank tasks,
`candidate_ids`/`candidate_mask` (C x Lc: every label's target).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytask.errors import ConfigError
from polytask.models.backbones import _from_pretrained
from polytask.models.inputs import Encoded, TextInputs
from polytask.models.spec import BackboneSpec

GENERATION = "generation"  #: level of a free-text generation task
RANK = "rank"  #: level of a classification-as-generation task (rank classification)
GENERATIVE_LEVELS = frozenset({GENERATION, RANK})
IGNORE = -100  # a position without a label (PyTorch's cross-entropy default)


class GenerativeInputs(TextInputs):
    """The tokenizer of a generative backbone, with what a generation kind needs to lay out
    prompts and targets: whether the model is encoder-decoder, and its decoder start id."""

    def __init__(self, tokenizer: Any, name: str, max_length: int, is_encoder_decoder: bool,
                 decoder_start_id: int | None = None) -> None:
        if tokenizer.pad_token_id is None:  # most causal LMs ship without a padding token
            tokenizer.pad_token = tokenizer.eos_token
        super().__init__(tokenizer, name, max_length)
        self.is_encoder_decoder = is_encoder_decoder
        self.decoder_start_id = decoder_start_id


def _left_trimmed(ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Left-padded `ids`/`mask` without the leading columns that are padding in every row."""
    width = int(mask.sum(dim=-1).max().clamp(min=1))
    return ids[..., ids.shape[-1] - width:], mask[..., mask.shape[-1] - width:]


def _right_trimmed(ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Right-padded `ids`/`mask` without the trailing columns that are padding in every row."""
    width = int(mask.sum(dim=-1).max().clamp(min=1))
    return ids[..., :width], mask[..., :width]


def _target_log_likelihood(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Sum over the masked-in positions of log p(target token): logits (N x L x V), targets
    and mask (N x L) -> N."""
    picked = logits.float().log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (picked * mask.to(picked.dtype)).sum(-1)


class GenerativeBackbone(nn.Module):
    """A transformers causal LM or encoder-decoder model as a polytask backbone (see the
    module docstring for what each level returns)."""

    def __init__(self, model: nn.Module, pad_id: int, eos_id: int | None) -> None:
        super().__init__()
        self.model = model
        self.is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        self.output_dim = int(model.config.hidden_size)
        self.pad_id = pad_id
        self.eos_id = eos_id
        #: Set by `decoding(model)`: generate / score candidates instead of teacher forcing.
        self.decoding = False
        parameters = inspect.signature(model.forward).parameters
        self._takes_positions = "position_ids" in parameters
        self._keeps_logits = "logits_to_keep" in parameters

    def forward(self, inputs: Encoded, level: str = "sequence") -> Tensor:
        if level not in GENERATIVE_LEVELS:
            return self.features(inputs, level)
        if not self.decoding:
            return self.teacher_forced_logits(inputs)
        return self.generate(inputs) if level == GENERATION else self.candidate_scores(inputs)

    # -- encoder kinds ----------------------------------------------------------------
    def features(self, inputs: Encoded, level: str) -> Tensor:
        """Encoder features: B x L x D for `"token"`, else mean-pooled B x D."""
        encoder = self.model.get_encoder() if self.is_encoder_decoder else self.model.base_model
        mask = inputs["attention_mask"]
        hidden = encoder(input_ids=inputs["input_ids"], attention_mask=mask).last_hidden_state
        if level == "token":
            return hidden
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)

    # -- training ---------------------------------------------------------------------
    def teacher_forced_logits(self, inputs: Encoded) -> Tensor:
        """Next-token logits over the target positions (causal LM: over prompt + target)."""
        if not self.is_encoder_decoder:
            return self.model(input_ids=inputs["input_ids"],
                              attention_mask=inputs["attention_mask"]).logits
        decoder_ids, decoder_mask = _right_trimmed(inputs["decoder_input_ids"],
                                                   inputs["decoder_attention_mask"])
        return self.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                          decoder_input_ids=decoder_ids,
                          decoder_attention_mask=decoder_mask).logits

    # -- evaluation -------------------------------------------------------------------
    def _prompt(self, inputs: Encoded) -> tuple[Tensor, Tensor]:
        """The prompt alone: left-padded for a causal LM, the encoder input otherwise."""
        if self.is_encoder_decoder:
            return inputs["input_ids"], inputs["attention_mask"]
        return _left_trimmed(inputs["prompt_ids"], inputs["prompt_mask"])

    def generate(self, inputs: Encoded) -> Tensor:
        """Greedy continuation of each prompt: B x N token ids (N = the rows' `new_tokens`),
        IGNORE from the end-of-sequence token on."""
        ids, mask = self._prompt(inputs)
        steps = int(inputs["new_tokens"].max())
        out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps,
                                  do_sample=False, num_beams=1, pad_token_id=self.pad_id,
                                  eos_token_id=self.eos_id)
        new = out[:, ids.shape[1]:] if not self.is_encoder_decoder else out[:, 1:]
        new = F.pad(new, (0, steps - new.shape[1]), value=IGNORE)[:, :steps]
        if self.eos_id is not None:  # everything from the end token on is not output
            ended = (new == self.eos_id).long().cumsum(dim=1) > 0
            new = new.masked_fill(ended, IGNORE)
        return new

    def candidate_scores(self, inputs: Encoded) -> Tensor:
        """log p(candidate target | prompt), summed over the candidate's tokens: B x C."""
        candidates, candidate_mask = _right_trimmed(inputs["candidate_ids"],
                                                    inputs["candidate_mask"])
        rows, count, width = candidates.shape
        flat_ids, flat_mask = candidates.reshape(-1, width), candidate_mask.reshape(-1, width)
        ids, mask = self._prompt(inputs)
        ids = ids.repeat_interleave(count, dim=0)
        mask = mask.repeat_interleave(count, dim=0)
        if self.is_encoder_decoder:
            start = torch.full_like(flat_ids[:, :1], self._decoder_start_id())
            decoder_ids = torch.cat([start, flat_ids[:, :-1]], dim=1)
            decoder_mask = torch.cat([torch.ones_like(flat_mask[:, :1]), flat_mask[:, :-1]], 1)
            logits = self.model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids,
                                decoder_attention_mask=decoder_mask).logits
        else:
            logits = self._continuation_logits(ids, mask, flat_ids, flat_mask)
        return _target_log_likelihood(logits, flat_ids, flat_mask).reshape(rows, count)

    def _continuation_logits(self, prompt: Tensor, prompt_mask: Tensor, targets: Tensor,
                             target_mask: Tensor) -> Tensor:
        """Causal LM: the logits that predict each target token after its (left-padded)
        prompt, N x Lc x V."""
        ids = torch.cat([prompt, targets], dim=1)
        mask = torch.cat([prompt_mask, target_mask], dim=1)
        extra: dict[str, Any] = {}
        if self._takes_positions:  # left padding: positions count real tokens only
            extra["position_ids"] = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
        width = targets.shape[1]
        if self._keeps_logits:
            extra["logits_to_keep"] = width + 1
        logits = self.model(input_ids=ids, attention_mask=mask, **extra).logits
        return logits[:, -width - 1:-1]

    def _decoder_start_id(self) -> int:
        start = getattr(self.model.config, "decoder_start_token_id", None)
        return self.pad_id if start is None else int(start)


@contextmanager
def decoding(model: nn.Module) -> Iterator[None]:
    """Within the block, the generative backbones of `model` generate text and score rank
    candidates instead of returning teacher-forced logits (evaluation and `predict`)."""
    backbones = [m for m in model.modules() if isinstance(m, GenerativeBackbone)]
    before = [b.decoding for b in backbones]
    for backbone in backbones:
        backbone.decoding = True
    try:
        yield
    finally:
        for backbone, state in zip(backbones, before, strict=True):
            backbone.decoding = state


def check_sharing(architecture: str, options: Mapping[str, Any], tasks: Sequence[str]) -> None:
    """Generation `tasks` read the LM's own output, which no sharing layer may transform:
    only `hard_sharing` without extra layers passes it through."""
    if architecture != "hard_sharing" or options.get("layers", 0):
        raise ConfigError(
            f"model.architecture: generation task(s) {list(tasks)} read the language model's "
            f"own output, which {architecture!r}{' with layers' if options.get('layers') else ''}"
            " would transform; use architecture: hard_sharing (no extra layers), or share "
            "differently with model.adapter (e.g. task_lora)")


def _is_encoder_only(config: Any) -> bool:
    """A model type that transformers knows as a masked LM and not as an encoder-decoder
    (BERT, RoBERTa, ELECTRA...): it has no decoder to generate with, even where a causal-LM
    head class exists for it."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return (not getattr(config, "is_encoder_decoder", False)
            and config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES)


def _no_generation(spec: BackboneSpec, tasks: Sequence[str], why: str) -> ConfigError:
    return ConfigError(
        f"tasks {list(tasks)}: kind 'generation' needs a generative backbone, but "
        f"model.backbone ({spec.type}{f' {spec.name!r}' if spec.name else ''}) {why}. Use a "
        "causal LM (e.g. name: smollm2-135m) or an encoder-decoder model (T5, BART) with "
        "type: hf, or train these tasks with an encoder kind (classification).")


def build_generative(spec: BackboneSpec, tasks: Sequence[str],
                     backbone: nn.Module | None = None,
                     ) -> tuple[GenerativeBackbone, GenerativeInputs]:
    """The generative backbone and its tokenizer, for a run with generation `tasks`: a causal
    LM or an encoder-decoder model, told apart by the model's config. With a `backbone` of
    the user's (a `GenerativeBackbone`), only the tokenizer is loaded."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
    )

    if spec.type != "hf":
        raise _no_generation(spec, tasks, "is not a Hugging Face model")
    if spec.trainable_layers is not None:
        raise ConfigError("model.backbone.trainable_layers: applies to encoder backbones; to "
                          "train part of a generative model, use model.adapter (e.g. lora)")
    config, _ = _from_pretrained(spec, AutoConfig)
    if _is_encoder_only(config):
        raise _no_generation(spec, tasks, f"is encoder-only ({config.model_type})")
    tokenizer, path = _from_pretrained(spec, AutoTokenizer)
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    inputs = GenerativeInputs(tokenizer, f"{spec.name}:{path}", spec.max_length,
                              encoder_decoder, getattr(config, "decoder_start_token_id", None))
    if backbone is not None:
        if not isinstance(backbone, GenerativeBackbone):
            raise _no_generation(spec, tasks, f"was given as a {type(backbone).__name__}, "
                                 "not a GenerativeBackbone")
        return backbone, inputs
    loader = AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM
    model, _ = _from_pretrained(spec, loader)
    return GenerativeBackbone(model, tokenizer.pad_token_id, tokenizer.eos_token_id), inputs
