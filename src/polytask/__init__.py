"""polytask: multi-task training that is easy, fast, measurable and correct.

The public API:

    from polytask import Task, load_config, Trainer
    config = load_config("examples/census.yaml")
    results = Trainer(config, run_dir="runs/census").fit()
"""

from polytask.config import RunConfig, load_config
from polytask.models.model import MultiTaskModel
from polytask.tasks.spec import DataSpec, Task
from polytask.train.trainer import Trainer

__all__ = ["DataSpec", "MultiTaskModel", "RunConfig", "Task", "Trainer", "load_config"]
__version__ = "0.1.0"
