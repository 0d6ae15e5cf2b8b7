"""Callbacks: the report written at the end of training by default, TensorBoard and MLflow
under stable names (MLflow through a stand-in module that records its calls), and a clear
error naming the pip command when a logger is selected but its package is missing."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

import pytest

from polytask import Trainer, load_config
from polytask.errors import ConfigError
from polytask.train import loggers
from polytask.train.callbacks import CALLBACKS
from polytask.train.loggers import MLflowCallback, TensorBoardCallback, scalars
from tests.conftest import tabular_config


def _config(tabular_file: Path, callbacks: list[str] | None, balancer: str = "uw") -> object:
    train: dict[str, object] = {"max_steps": 10, "eval_every": 5, "log_every": 2}
    if callbacks is not None:
        train["callbacks"] = callbacks
    config = tabular_config(tabular_file, **train)
    if callbacks is None:  # the shared test config turns callbacks off; restore the default
        del config["train"]["callbacks"]  # type: ignore[attr-defined]
    config["balancer"] = balancer
    return load_config(config)


def test_callbacks_are_registered_and_report_is_the_default(tabular_file: Path) -> None:
    assert {"report", "tensorboard", "mlflow"} <= set(CALLBACKS.names())
    assert _config(tabular_file, None).train.callbacks == ["report"]  # type: ignore[attr-defined]


def test_stable_scalar_names() -> None:
    train = {"step": 10, "split": "train", "loss/a": 0.5, "weight/a": 1.2, "lr": 1e-3,
             "grad_norm": 2.0, "cosine/a/b": -0.3}
    assert scalars(train) == {"loss/a": 0.5, "weight/a": 1.2, "lr": 1e-3, "grad_norm": 2.0,
                              "cosine/a/b": -0.3}
    validation = {"step": 10, "split": "validation", "score": 0.1, "a/accuracy": 0.9,
                  "b/mae": float("nan")}
    assert scalars(validation) == {"validation/score": 0.1, "validation/a/accuracy": 0.9}
    assert scalars({"step": 3, "split": "test", "a/accuracy": 0.8}) == {"test/a/accuracy": 0.8}


def test_report_written_at_the_end_of_training_unless_disabled(
        tmp_path: Path, tabular_file: Path) -> None:
    Trainer(_config(tabular_file, None, balancer="pcgrad"), tmp_path / "run").fit()
    page = (tmp_path / "run" / "report.html").read_text()
    for title in ("Training loss per task", "Validation metric per task",
                  "Pairwise gradient cosine over training", "Multi-task vs single-task (test)"):
        assert f'<img alt="{title}"' in page
    assert (tmp_path / "run" / "gradient_cosine.png").exists()
    Trainer(_config(tabular_file, []), tmp_path / "off").fit()
    assert not (tmp_path / "off" / "report.html").exists()


@pytest.mark.parametrize(("name", "cls", "package"), [
    ("tensorboard", TensorBoardCallback, "tensorboard"), ("mlflow", MLflowCallback, "mlflow")])
def test_missing_logger_package_is_a_clear_config_error(
        tmp_path: Path, tabular_file: Path, monkeypatch: pytest.MonkeyPatch, name: str,
        cls: type, package: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(loggers.importlib.util, "find_spec",
                        lambda mod, *a: None if mod == package else real(mod, *a))
    with pytest.raises(ConfigError, match=rf"pip install {package}"):
        cls()
    with pytest.raises(ConfigError, match=rf"train.callbacks: '{name}' needs the {package}"):
        Trainer(_config(tabular_file, ["report", name]), tmp_path / "run").fit()
    assert not (tmp_path / "run" / "results.json").exists()


def test_tensorboard_logs_losses_weights_metrics_and_lr(tmp_path: Path,
                                                        tabular_file: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    Trainer(_config(tabular_file, ["tensorboard"]), tmp_path / "run").fit()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for task, metric in (("up", "accuracy"), ("size", "mae"), ("flags", "micro_f1")):
        assert {f"loss/{task}", f"weight/{task}", f"validation/{task}/{metric}",
                f"test/{task}/{metric}"} <= tags
    assert {"lr", "validation/score"} <= tags
    assert [e.step for e in events.Scalars("loss/up")] == [2, 4, 6, 8, 10]


class FakeMLflow(types.ModuleType):
    """Stands in for the `mlflow` module: records every call the callback makes."""

    def __init__(self) -> None:
        super().__init__("mlflow")
        self.__spec__ = importlib.machinery.ModuleSpec("mlflow", None)
        self.run_name: str | None = None
        self.ended = False
        self.params: dict[str, str] = {}
        self.metrics: dict[str, list[tuple[int, float]]] = {}
        self.artifacts: list[str] = []

    def active_run(self) -> str | None:
        return None if self.ended else self.run_name

    def start_run(self, run_name: str) -> None:
        self.run_name = run_name

    def end_run(self) -> None:
        self.ended = True

    def log_params(self, params: dict[str, str]) -> None:
        self.params.update(params)

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.log_metric(name, value, step)

    def log_metric(self, name: str, value: float, step: int) -> None:
        self.metrics.setdefault(name, []).append((step, value))

    def log_artifact(self, path: str) -> None:
        self.artifacts.append(Path(path).name)


def test_mlflow_logs_params_metrics_and_artifacts(tmp_path: Path, tabular_file: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeMLflow()
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    Trainer(_config(tabular_file, ["report", "mlflow"]), tmp_path / "run").fit()
    assert fake.run_name == "run" and fake.ended
    assert fake.params["balancer.name"] == "uw"
    assert {"loss/up", "weight/size", "lr", "validation/up/accuracy",
            "test/size/mae"} <= set(fake.metrics)
    assert [step for step, _ in fake.metrics["loss/up"]] == [2, 4, 6, 8, 10]
    assert {"results.json", "report.html"} <= set(fake.artifacts)
