"""Image backbones: torchvision and timm models by name (no download), the MultiMNIST
LeNet, local weights, and clear errors.

No torchvision build for this machine's CPU torch exists offline (the PyPI wheel is a CUDA
build that does not import next to it), so the builders are tested against stand-in modules
with the same API (`models.list_models`, `models.get_model`; `is_model`, `create_model`) that
return small real models."""

from __future__ import annotations

import importlib.machinery
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from polytask import Trainer, load, load_config
from polytask.errors import ConfigError
from polytask.models.images import IMAGE_KEY, ImageInputs
from polytask.models.spec import BackboneSpec, ImageSpec
from polytask.models.vision import LeNetFeatures, build_vision


class TinyClassifier(nn.Module):
    """A torchvision-style classifier: features, then a final `fc` (as resnet has)."""

    def __init__(self, in_chans: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = 8
        self.fc: nn.Module = nn.Linear(8, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))


def stand_in(name: str, **attributes: object) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attributes)
    return module


@pytest.fixture
def torchvision(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """A stand-in torchvision whose `tinynet` is `TinyClassifier` (RGB, 10 classes)."""
    built: list[dict[str, object]] = []

    def get_model(name: str, **options: object) -> nn.Module:
        built.append({"name": name, **options})
        return TinyClassifier()

    models = types.SimpleNamespace(list_models=lambda module=None: ["resnet18", "tinynet"],
                                   get_model=get_model)
    monkeypatch.setitem(sys.modules, "torchvision", stand_in("torchvision", models=models))
    return types.SimpleNamespace(built=built)


def inputs_for(channels: int, size: tuple[int, int]) -> ImageInputs:
    inputs = ImageInputs(ImageSpec())
    inputs.channels, inputs.size = channels, size
    return inputs


def batch(count: int, channels: int, size: int) -> dict[str, torch.Tensor]:
    return {IMAGE_KEY: torch.randint(0, 256, (count, channels, size, size), dtype=torch.uint8)}


def tiny_images(count: int = 24, size: int = 16) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, size, size), dtype=np.uint8)
    bright = images.mean(axis=(1, 2)) > 127.5
    return pd.DataFrame({"image": list(images), "bright": np.where(bright, "yes", "no"),
                         "parity": (np.arange(count) % 2).astype(str)})


def test_torchvision_model_trains_two_steps_and_predicts(
        tmp_path: Path, torchvision: types.SimpleNamespace) -> None:
    frame = tiny_images()
    config = load_config({
        "data": frame,
        "tasks": [{"name": "bright", "kind": "classification", "input": "image",
                   "label": "bright"},
                  {"name": "parity", "kind": "classification", "input": "image",
                   "label": "parity"}],
        "model": {"backbone": {"type": "torchvision", "name": "tinynet",
                               "image": {"mean": [0.5], "std": [0.25],
                                         "augment": {"flip": True}}}},
        "balancer": {"name": "mgda"},
        "train": {"max_steps": 2, "batch_size": 8, "eval_every": 2, "progress": False,
                  "callbacks": []},
    })
    results = Trainer(config, tmp_path / "run").fit()
    assert set(results["tasks"]) == {"bright", "parity"}
    assert torchvision.built[0] == {"name": "tinynet", "weights": None}  # nothing downloads
    predictions = load(tmp_path / "run").predict(frame.head(3))
    assert list(predictions.columns) == ["bright", "parity"] and len(predictions) == 3


@pytest.mark.usefixtures("torchvision")
def test_torchvision_features_are_the_penultimate_layer() -> None:
    backbone = build_vision(BackboneSpec(type="torchvision", name="tinynet"),
                            inputs_for(1, (12, 12)))
    assert backbone.output_dim == 8 and isinstance(backbone.features.fc, nn.Identity)
    assert backbone(batch(2, 1, 12)).shape == (2, 8)  # grey images repeated to RGB


@pytest.mark.usefixtures("torchvision")
def test_unknown_torchvision_model_suggests_names() -> None:
    with pytest.raises(ConfigError, match=r"resnet181.*did you mean.*resnet18"):
        build_vision(BackboneSpec(type="torchvision", name="resnet181"), inputs_for(3, (8, 8)))


@pytest.mark.usefixtures("torchvision")
def test_weights_path_loads_a_saved_state_dict(tmp_path: Path) -> None:
    source = TinyClassifier()
    torch.save(source.state_dict(), tmp_path / "tiny.pt")
    spec = BackboneSpec(type="torchvision", name="tinynet", weights_path=str(tmp_path / "tiny.pt"))
    backbone = build_vision(spec, inputs_for(3, (8, 8)))
    assert torch.equal(backbone.features.conv.weight, source.conv.weight)
    torch.save({"other": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="does not fit the model"):
        build_vision(spec.model_copy(update={"weights_path": str(tmp_path / "bad.pt")}),
                     inputs_for(3, (8, 8)))


def test_missing_torchvision_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if not installed
    with pytest.raises(ConfigError, match="needs the torchvision package"):
        build_vision(BackboneSpec(type="torchvision", name="resnet18"), inputs_for(3, (8, 8)))


def test_lenet_is_the_published_multimnist_encoder() -> None:
    backbone = build_vision(BackboneSpec(type="lenet"), inputs_for(1, (28, 28)))
    features = backbone.features
    assert isinstance(features, LeNetFeatures)
    assert features.fc.in_features == 320 and backbone.output_dim == 50
    assert sum(p.numel() for p in backbone.parameters()) == 260 + 5020 + 16050
    assert backbone(batch(3, 1, 28)).shape == (3, 50)
    with pytest.raises(ConfigError, match="at least 16 x 16"):
        build_vision(BackboneSpec(type="lenet"), inputs_for(1, (12, 12)))


def test_a_dense_level_is_refused_by_a_classification_backbone() -> None:
    backbone = build_vision(BackboneSpec(type="lenet"), inputs_for(1, (28, 28)))
    with pytest.raises(ConfigError, match="dense backbone"):
        backbone(batch(1, 1, 28), "dense")


def test_timm_model_by_name_with_the_images_channels(
        monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[dict[str, object]] = []

    def create_model(name: str, **options: object) -> nn.Module:
        made.append({"name": name, **options})
        return TinyClassifier(int(options["in_chans"]), int(options["num_classes"]))

    monkeypatch.setitem(sys.modules, "timm", stand_in(
        "timm", is_model=lambda name: name == "tinynet", create_model=create_model))
    backbone = build_vision(BackboneSpec(type="timm", name="tinynet"), inputs_for(1, (8, 8)))
    assert made == [{"name": "tinynet", "pretrained": False, "num_classes": 0, "in_chans": 1}]
    assert backbone(batch(2, 1, 8)).shape == (2, 8)
    with pytest.raises(ConfigError, match="not a timm model"):
        build_vision(BackboneSpec(type="timm", name="nonet"), inputs_for(1, (8, 8)))


def test_timm_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed
    with pytest.raises(ConfigError, match="pip install --no-deps timm"):
        build_vision(BackboneSpec(type="timm", name="resnet18"), inputs_for(3, (32, 32)))


def test_image_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="both `mean` and `std`"):
        ImageSpec(mean=[0.5])
    with pytest.raises(ValueError, match="impute"):
        BackboneSpec(type="lenet", impute="median")

