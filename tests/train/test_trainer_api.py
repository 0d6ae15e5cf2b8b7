"""`Trainer(config, model=..., data=..., callbacks=...)`: a backbone or MultiTaskModel of
the user's own and DataFrames passed in code train through the Trainer; the model returns a
`ModelOutput`; bad arguments are clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import transformers
from torch import Tensor, nn

from polytask import MultiTaskModel, Trainer, load_config
from polytask.errors import ConfigError
from polytask.models.inputs import TextInputs
from polytask.models.model import ModelOutput
from polytask.models.sharing.hard_sharing import HardSharing
from polytask.models.spec import BackboneSpec
from polytask.pipeline import build_encoder

COLUMNS = ["a", "b", "c"]


def _frame(seed: int = 0, n: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2],
                         "up": np.where(x[:, 0] + x[:, 1] > 0, "yes", "no"),
                         "size": 2 * x[:, 0] - x[:, 2]})


def _config(**train: object) -> Any:
    """Two tasks that declare no data: `Trainer(data=...)` gives it."""
    return load_config({
        "tasks": [{"name": "up", "kind": "classification", "input": COLUMNS, "label": "up"},
                  {"name": "size", "kind": "regression", "input": COLUMNS, "label": "size"}],
        "model": {"backbone": {"type": "mlp", "hidden": [8]}},
        "train": {"max_steps": 30, "batch_size": 32, "eval_every": 10, "progress": False,
                  "callbacks": [], "lr": 0.02, **train},
        "baselines": "none",
    })


class NumericTrunk(nn.Module):
    """A backbone of the user's: reads the standardised numeric columns only."""

    feature_dim = 12

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 12), nn.Tanh())

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        return self.net(inputs["numeric"])


def test_a_custom_backbone_trains_on_user_dataframes(tmp_path: Path) -> None:
    trunk = NumericTrunk()
    frame = _frame()
    trainer = Trainer(_config(), tmp_path / "run", model=trunk,
                      data={"up": frame, "size": {"train": frame.iloc[:200],
                                                  "validation": frame.iloc[200:250],
                                                  "test": frame.iloc[250:]}})
    results = trainer.fit()
    assert trainer.model.backbone is trunk  # wrapped with the config's architecture/heads
    assert set(results["tasks"]) == {"up", "size"}
    assert results["tasks"]["up"]["metrics"]["accuracy"] > 0.7
    assert (tmp_path / "run" / "results.json").exists()


def test_a_ready_multitask_model_is_used_as_given(tmp_path: Path) -> None:
    trunk = NumericTrunk()
    model = MultiTaskModel(trunk, {"up": nn.Linear(12, 2), "size": nn.Linear(12, 1)},
                           HardSharing(12, ["up", "size"]))
    trainer = Trainer(_config(max_steps=5), tmp_path / "run", model=model,
                      data={"up": _frame(), "size": _frame(1)})
    trainer.fit()
    assert trainer.model is model


def test_model_returns_an_output_object() -> None:
    model = MultiTaskModel(NumericTrunk(), {"a": nn.Linear(12, 1), "b": nn.Linear(12, 1)})
    x = {"numeric": torch.randn(4, 3)}
    output = model({"a": x, "b": x})
    assert isinstance(output, ModelOutput)
    assert set(output.outputs) == {"a", "b"} and output["a"].shape == (4, 1)
    assert output.features is not None and output.features.shape == (4, 12)
    assert output.auxiliary_loss is None
    separate = model({"a": x, "b": {"numeric": torch.randn(4, 3)}})
    assert separate.features is None  # two backbone passes: no one shared tensor


def test_bad_model_and_data_arguments_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no task named \['sizes'\].*'up', 'size'"):
        Trainer(_config(), tmp_path / "a", data={"up": _frame(), "sizes": _frame()})
    one_head = MultiTaskModel(NumericTrunk(), {"up": nn.Linear(12, 2)})
    with pytest.raises(ConfigError, match=r"no head for task\(s\) \['size'\]"):
        Trainer(_config(), tmp_path / "b", model=one_head,
                data={"up": _frame(), "size": _frame()}).fit()
    with pytest.raises(ConfigError, match="output_dim"):
        Trainer(_config(), tmp_path / "c", model=nn.Linear(3, 4),
                data={"up": _frame(), "size": _frame()}).fit()


def test_a_task_without_data_is_refused_before_training(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tasks\.up: the task has no `data`.*Trainer\(config, "
                       r"data="):
        Trainer(_config(), tmp_path / "run").fit()
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_user_backbone_spares_loading_the_configured_weights(
        tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the user's backbone, a text config loads only its tokenizer (not the model)."""
    def no_weights(*args: object, **kwargs: object) -> None:
        raise AssertionError("the configured model's weights were loaded")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", no_weights)
    trunk = NumericTrunk()
    spec = BackboneSpec(type="hf", name=str(tiny_bert), max_length=16)
    backbone, encoder = build_encoder(spec, {}, {}, trunk)
    assert backbone is trunk
    assert isinstance(encoder, TextInputs)
