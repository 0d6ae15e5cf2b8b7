"""Image backbones: torchvision and timm classification models, and the MultiMNIST LeNet.

Every image backbone takes the encoded batch ``{"image": uint8 B x C x H x W}`` (see
`polytask.models.images`), normalises it with its `ImageNormalize` and returns B x D
features (`output_dim` = D). A type is one builder in `VISION_BUILDERS`, called with the
backbone settings and the fitted `ImageInputs` (which knows the images' channels and size):

- ``torchvision``: any classification model of `torchvision.models` by `name`; the features
  are the input of its last linear layer (the penultimate layer). Grey images are repeated
  to 3 channels.
- ``timm``: any `timm` model by `name` (needs timm installed), built with ``num_classes=0``
  (pooled features) and the images' channel count.
- ``lenet``: the LeNet-style shared encoder of the MultiMNIST experiments (Sener & Koltun
  2018, "Multi-Task Learning as Multi-Objective Optimization"; also the MGDA/Nash-MTL code).

`pretrained: false` (the default) never downloads; `weights_path` loads local weights.
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from polytask.errors import ConfigError
from polytask.models.images import IMAGE_KEY, ImageInputs, ImageNormalize
from polytask.models.inputs import Encoded
from polytask.models.spec import BackboneSpec

VisionBuilder = Callable[[BackboneSpec, ImageInputs], nn.Module]
#: Image backbone type -> builder (spec, fitted ImageInputs) -> backbone module.
VISION_BUILDERS: dict[str, VisionBuilder] = {}


def register_vision(name: str) -> Callable[[VisionBuilder], VisionBuilder]:
    """Register the builder of image backbone type `name`."""

    def register(builder: VisionBuilder) -> VisionBuilder:
        VISION_BUILDERS[name] = builder
        return builder

    return register


def build_vision(spec: BackboneSpec, inputs: ImageInputs) -> nn.Module:
    """The image backbone `spec.type`, sized for the fitted `inputs`."""
    builder = VISION_BUILDERS.get(spec.type)
    if builder is None:
        raise ConfigError(f"model.backbone.type: {spec.type!r} is not an image backbone; use "
                          f"one of {sorted(VISION_BUILDERS)}")
    return builder(spec, inputs)


class ImageBackbone(nn.Module):
    """Normalise the uint8 images, run `features`, flatten: B x `output_dim` features."""

    def __init__(self, features: nn.Module, output_dim: int, normalize: ImageNormalize) -> None:
        super().__init__()
        self.normalize = normalize
        self.features = features
        self.output_dim = output_dim

    def forward(self, inputs: Encoded, level: str = "sequence") -> Tensor:
        if level != "sequence":
            raise ConfigError(f"this image backbone gives one feature vector per image, not "
                              f"{level!r} outputs; a dense task needs a dense backbone (e.g. "
                              "model.backbone.type: segnet)")
        out = self.features(self.normalize(inputs[IMAGE_KEY]))
        if isinstance(out, tuple):  # GoogLeNet/Inception's (logits, aux) in training mode
            out = out[0]
        return out.flatten(1)


def _normalizer(spec: BackboneSpec, inputs: ImageInputs, channels: int) -> ImageNormalize:
    """The input normalisation, expanding grey images to the model's `channels`."""
    mean = spec.image.mean
    if mean is not None and len(mean) not in (1, channels):
        raise ConfigError(f"model.backbone.image.mean: {len(mean)} value(s), but the model "
                          f"reads {channels} channel(s); give 1 or {channels}")
    return ImageNormalize(mean, spec.image.std, channels if channels != inputs.channels else None)


def load_weights(model: nn.Module, path: str, optional: Collection[str] = ()) -> None:
    """Load a local state dict (torch.save or safetensors) into `model`. Keys in `optional`
    (a classifier the features drop) may be missing; any other mismatch is an error."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"model.backbone.weights_path: {str(file)!r} does not exist; give the "
                          "path of a saved state dict")
    try:
        if file.suffix == ".safetensors":
            state = load_file(file)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch/safetensors raise many types for a bad file
        raise ConfigError(f"model.backbone.weights_path: cannot read {str(file)!r}: {error}"
                          ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in optional]
    if missing or unexpected:
        raise ConfigError(
            f"model.backbone.weights_path: {str(file)!r} does not fit the model: missing "
            f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
            f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}; save the state dict of "
            "the same architecture")


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ConfigError(f"model.backbone.name: {type(model).__name__} has no final linear "
                          "classifier to take the features before; pick another model")
    return found[-1]


def _drop_classifier(model: nn.Module) -> int:
    """Replace the last linear layer by the identity; return its input width."""
    name, linear = _last_linear(model)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Identity())
    return int(linear.in_features)


def _torchvision() -> Any:
    """torchvision, imported here (it is optional); a clear ConfigError when it is missing
    or does not import next to this torch."""
    if importlib.util.find_spec("torchvision") is None:
        raise ConfigError("model.backbone.type: torchvision needs the torchvision package: "
                          "install the build matching your torch (for torch 2.13 CPU: pip "
                          "install torchvision==0.28.0 --index-url "
                          "https://download.pytorch.org/whl/cpu)")
    try:
        import torchvision
    except (ImportError, RuntimeError) as error:
        raise ConfigError(f"model.backbone.type: torchvision does not import here ({error}); "
                          "install the torchvision build that matches your torch") from None
    return torchvision


def _pretrained_error(library: str, name: str, error: Exception) -> ConfigError:
    return ConfigError(
        f"model.backbone.pretrained: cannot get {library}'s pretrained weights of {name!r} "
        f"(they are neither in the local cache nor downloadable: {error}); set pretrained: "
        "false, or point weights_path at a local file")


@register_vision("torchvision")
def build_torchvision(spec: BackboneSpec, inputs: ImageInputs) -> ImageBackbone:
    """A torchvision classification model by name, up to its penultimate layer."""
    torchvision = _torchvision()
    if not spec.name:
        raise ConfigError("model.backbone.name is required for type 'torchvision' (e.g. "
                          "resnet18)")
    known = torchvision.models.list_models(module=torchvision.models)
    if spec.name not in known:
        close = difflib.get_close_matches(spec.name, known, n=3)
        raise ConfigError(f"model.backbone.name: {spec.name!r} is not a torchvision "
                          f"classification model{f'; did you mean {close}?' if close else ''} "
                          "(torchvision.models.list_models() lists them)")
    options: dict[str, Any] = {"weights": "DEFAULT" if spec.pretrained else None}
    if spec.name in ("googlenet", "inception_v3") and not spec.pretrained:
        options["aux_logits"] = False
    try:
        model = torchvision.models.get_model(spec.name, **options)
    except (OSError, RuntimeError, ValueError) as error:
        raise _pretrained_error("torchvision", spec.name, error) from None
    final, _ = _last_linear(model)
    if spec.weights_path:
        load_weights(model, spec.weights_path, {f"{final}.weight", f"{final}.bias"})
    width = _drop_classifier(model)
    return ImageBackbone(model, width, _normalizer(spec, inputs, 3))


@register_vision("timm")
def build_timm(spec: BackboneSpec, inputs: ImageInputs) -> ImageBackbone:
    """A timm model by name with pooled features (``num_classes=0``)."""
    try:
        import timm
    except (ImportError, RuntimeError) as error:
        raise ConfigError(f"model.backbone.type: timm cannot be imported ({error}); install it "
                          "with pip install --no-deps timm (so that it does not pull another "
                          "torch), next to torchvision, huggingface_hub, pyyaml and "
                          "safetensors") from None
    if not spec.name:
        raise ConfigError("model.backbone.name is required for type 'timm' (e.g. resnet18)")
    if not timm.is_model(spec.name):
        raise ConfigError(f"model.backbone.name: {spec.name!r} is not a timm model; "
                          "timm.list_models('*pattern*') lists them")
    channels = inputs.channels or 3
    try:
        model = timm.create_model(spec.name, pretrained=spec.pretrained, num_classes=0,
                                  in_chans=channels)
    except (OSError, RuntimeError, ValueError) as error:
        raise _pretrained_error("timm", spec.name, error) from None
    if spec.weights_path:
        load_weights(model, spec.weights_path)
    return ImageBackbone(model, int(model.num_features), _normalizer(spec, inputs, channels))


class LeNetFeatures(nn.Module):
    """The shared encoder of the MultiMNIST LeNet (`MultiLeNetR` in the MGDA code):
    conv 5x5 (10) -> max-pool 2 -> ReLU -> conv 5x5 (20) -> [dropout] -> max-pool 2 -> ReLU
    -> linear (50) -> ReLU. With 28 x 28 inputs the flattened width is 320, as published.
    The paper's per-task head (linear 50 -> ReLU -> linear 10) is `model.head_hidden: 50`."""

    def __init__(self, channels: int, size: tuple[int, int], width: int = 50,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.dropout = nn.Dropout2d(dropout) if dropout else nn.Identity()
        height, breadth = (((s - 4) // 2 - 4) // 2 for s in size)
        if height < 1 or breadth < 1:
            raise ConfigError(f"model.backbone: lenet needs images of at least 16 x 16 pixels, "
                              f"got {size[0]} x {size[1]}; set model.backbone.image.size")
        self.fc = nn.Linear(20 * height * breadth, width)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.dropout(self.conv2(x)), 2))
        return F.relu(self.fc(x.flatten(1)))


@register_vision("lenet")
def build_lenet(spec: BackboneSpec, inputs: ImageInputs) -> ImageBackbone:
    """The MultiMNIST LeNet for the fitted image size (`hidden[-1]`: the feature width if
    `hidden` is given, else the published 50)."""
    channels, size = inputs.channels or 1, inputs.size or (28, 28)
    width = spec.hidden[-1] if "hidden" in spec.model_fields_set else 50
    features = LeNetFeatures(channels, size, width, spec.dropout)
    if spec.weights_path:
        load_weights(features, spec.weights_path)
    return ImageBackbone(features, width, _normalizer(spec, inputs, channels))


# The SegNet builder lives with the SegNet (`type: segnet`); importing it registers it.
from polytask.models import segnet as _segnet  # noqa: E402, F401
