"""Callbacks that show a run where people already look: the HTML report, TensorBoard, MLflow.

Select them in the config (`train.callbacks: [report, tensorboard]`); `report` is the
default. They run beside metrics.jsonl, which is always written. Logged names are stable:

========================  ==========================================================
name                      what
========================  ==========================================================
``loss/<task>``           training loss of the task (train records)
``weight/<task>``         the task's loss weight (balancers that weight losses)
``lr``                    learning rate after the step
``grad_norm``             gradient norm before clipping
``cosine/<a>/<b>``        cosine of the two task gradients (gradient aggregators)
``validation/<task>/<m>`` metric `m` of the task at an evaluation; ``validation/score``
``test/<task>/<m>``       final test metrics; ``test/delta_m`` (Δm%, positive = better)
========================  ==========================================================

Only the main process (`polytask.process.is_main_process`) writes, so torchrun runs log
once. They act on the `Callback` events `on_train_begin`, `on_log` and `on_train_end`.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Mapping
from typing import Any

from rich.console import Console

from polytask.errors import ConfigError
from polytask.evaluate.report import write_run_report
from polytask.process import is_main_process
from polytask.train.callbacks import (
    CALLBACKS,
    Callback,
    TrainerControl,
    TrainerState,
    scalars,
)

__all__ = ["MLflowCallback", "ReportCallback", "TensorBoardCallback", "scalars"]


def _require(module: str, callback: str, install: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"train.callbacks: {callback!r} needs the {module} package, which is not "
            f"installed; install it with `pip install {install}` (or `pip install "
            f"'polytask[{callback}]'`), or remove {callback!r} from train.callbacks")


@CALLBACKS.register("report", paper="polytask's end-of-run HTML report (no paper): curves, "
                    "task weights, gradient cosines, multi- vs single-task")
class ReportCallback(Callback):
    """Write run_dir/report.html (figures embedded, PNGs beside it) when the run ends."""

    def on_train_end(self, state: TrainerState, control: TrainerControl,
                     results: Mapping[str, Any]) -> None:
        if not is_main_process():
            return
        try:
            write_run_report(state.run_dir)
        except Exception as error:  # the run itself succeeded: never fail it over a figure
            Console(stderr=True).print(f"[yellow]report: could not write {state.run_dir}/"
                                       f"report.html: {type(error).__name__}: {error}")


@CALLBACKS.register("tensorboard", paper="TensorBoard (Abadi et al. 2016, TensorFlow: "
                    "Large-Scale Machine Learning on Heterogeneous Distributed Systems)")
class TensorBoardCallback(Callback):
    """Log every record to TensorBoard event files in run_dir/tensorboard
    (view with `tensorboard --logdir runs`)."""

    def __init__(self) -> None:
        _require("tensorboard", "tensorboard", "tensorboard")
        self.writer: Any = None

    def on_train_begin(self, state: TrainerState, control: TrainerControl) -> None:
        if not is_main_process():
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(state.run_dir / "tensorboard"))

    def on_log(self, state: TrainerState, control: TrainerControl,
               record: Mapping[str, Any]) -> None:
        if self.writer is None:
            return
        step = int(record.get("step", 0))
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, step)

    def on_train_end(self, state: TrainerState, control: TrainerControl,
                     results: Mapping[str, Any]) -> None:
        if self.writer is None:
            return
        if results.get("delta_m") is not None:
            self.writer.add_scalar("test/delta_m", float(results["delta_m"]),
                                   int(results.get("steps", 0)))
        self.writer.close()
        self.writer = None


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:500]  # MLflow caps parameter values
    return out


@CALLBACKS.register("mlflow", paper="MLflow (Zaharia et al. 2018, Accelerating the Machine "
                    "Learning Lifecycle with MLflow)")
class MLflowCallback(Callback):
    """Log the config as parameters, every record as metrics, and results.json / report.html
    as artifacts to MLflow (where `MLFLOW_TRACKING_URI` points, else MLflow's default). Uses the
    active MLflow run when there is one, else starts (and ends) one named after the run dir."""

    def __init__(self) -> None:
        _require("mlflow", "mlflow", "mlflow")
        self.mlflow: Any = None
        self.own_run = False

    def on_train_begin(self, state: TrainerState, control: TrainerControl) -> None:
        if not is_main_process():
            return
        import mlflow

        self.mlflow = mlflow
        if mlflow.active_run() is None:
            mlflow.start_run(run_name=state.run_dir.name)
            self.own_run = True
        config = state.config
        params = _flatten({k: v for k, v in config.items() if k not in ("data", "tasks")})
        params.update({f"tasks.{i}.name": str(t.get("name"))
                       for i, t in enumerate(config.get("tasks") or []) if isinstance(t, dict)})
        # a resumed run logs the same params again, which MLflow may refuse
        with contextlib.suppress(Exception):
            mlflow.log_params(params)

    def on_log(self, state: TrainerState, control: TrainerControl,
               record: Mapping[str, Any]) -> None:
        if self.mlflow is None:
            return
        values = scalars(record)
        if values:
            self.mlflow.log_metrics(values, step=int(record.get("step", 0)))

    def on_train_end(self, state: TrainerState, control: TrainerControl,
                     results: Mapping[str, Any]) -> None:
        if self.mlflow is None:
            return
        if results.get("delta_m") is not None:
            self.mlflow.log_metric("test/delta_m", float(results["delta_m"]),
                                   step=int(results.get("steps", 0)))
        for name in ("results.json", "report.html"):
            path = state.run_dir / name
            if path.exists():
                self.mlflow.log_artifact(str(path))
        if self.own_run:
            self.mlflow.end_run()
        self.mlflow = None
