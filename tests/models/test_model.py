"""MultiTaskModel with any torch module as backbone, in a hand-written loop with a balancer;
and the Hugging Face backbone's sentence and token features."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from polytask import MultiTaskModel, balance
from polytask.models.backbones import build_text
from polytask.models.spec import BackboneSpec


def test_any_module_backbone_trains_with_a_balancer_in_a_plain_loop() -> None:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
    model = MultiTaskModel(trunk, {"a": nn.Linear(16, 1), "b": nn.Linear(16, 1)},
                           feature_dim=16)
    shared = model.shared_parameters()
    assert {id(p) for p in shared} == {id(p) for p in trunk.parameters()}
    assert {id(p) for p in model.task_parameters("a")} == {
        id(p) for p in model.heads["a"].parameters()}
    balancer = balance.get("pcgrad")
    balancer.setup(["a", "b"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(128, 6)
    targets = {"a": x[:, :1] + x[:, 1:2], "b": x[:, 2:3] - x[:, 3:4]}

    def losses() -> dict[str, torch.Tensor]:
        out = model({"a": x, "b": x})  # one tensor, one backbone pass
        return {t: nn.functional.mse_loss(out[t], targets[t]) for t in out}

    start = {t: v.item() for t, v in losses().items()}
    for _ in range(200):
        optimizer.zero_grad()
        balance.backward(losses(), shared, balancer, task_params=model.all_task_parameters())
        optimizer.step()
    end = {t: v.item() for t, v in losses().items()}
    assert all(end[t] < 0.3 * start[t] for t in start)
    output = model({"a": x, "b": x})
    assert output.features is not None  # every head read the same features
    assert output.auxiliary_loss is None  # hard sharing adds no extra loss


def test_backbone_width_is_required() -> None:
    with pytest.raises(ValueError, match="feature_dim"):
        MultiTaskModel(nn.Linear(3, 3), {"a": nn.Linear(3, 1)})


def test_hf_backbone_gives_sentence_and_token_features(tiny_bert: Path) -> None:
    backbone, encoder = build_text(BackboneSpec(type="hf", name=str(tiny_bert), max_length=16))
    import pandas as pd

    frame = pd.DataFrame({"text": ["the movie was good", "bad"], "words": [["a", "b"], ["c"]]})
    sentence = backbone(encoder.encode(frame, ["text"]), "sequence")
    assert sentence.shape == (2, backbone.output_dim)
    encoded = encoder.encode(frame, ["words"], words=True)
    tokens = backbone(encoded, "token")
    assert tokens.shape[:2] == encoded["input_ids"].shape
    assert (encoded["word_index"] >= 0).sum() == 3  # one first sub-word per word


def test_frozen_backbone_trains_nothing_but_top_layers(tiny_bert: Path) -> None:
    spec = BackboneSpec(type="hf", name=str(tiny_bert), trainable_layers=1)
    backbone, _ = build_text(spec)
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    assert trainable and all("layer.1." in n for n in trainable)
    frozen, _ = build_text(BackboneSpec(type="hf", name=str(tiny_bert), trainable_layers=0))
    assert frozen.frozen and not any(p.requires_grad for p in frozen.parameters())
