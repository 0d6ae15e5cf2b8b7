"""polytask: multi-task training that is easy, fast, measurable and correct.

The public API:

    from polytask import Task, Trainer, load, load_config
    config = load_config("examples/census.yaml")
    results = Trainer(config, run_dir="runs/census").fit()
    model = load("runs/census")   # a finished run, to predict on new rows
    model.predict(rows)           # a DataFrame, one column per task (proba=True: probabilities)
"""

from importlib.metadata import PackageNotFoundError, version

from polytask import _openmp  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads)
from polytask.config import RunConfig, load_config
from polytask.inference import LoadedRun, load
from polytask.models.model import MultiTaskModel
from polytask.tasks.spec import DataSpec, Task
from polytask.train.trainer import Trainer

__all__ = ["DataSpec", "LoadedRun", "MultiTaskModel", "RunConfig", "Task", "Trainer", "load",
           "load_config"]
try:
    __version__ = version("polytask")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
