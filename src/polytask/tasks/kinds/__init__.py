"""Task kinds, one file each, registered in `TASK_KINDS` (see `base.TaskKind`)."""

from polytask.registry import import_submodules
from polytask.tasks.kinds.base import IGNORE, TASK_KINDS, TaskKind
from polytask.tasks.kinds.classification import Classification
from polytask.tasks.kinds.multilabel import MultiLabel
from polytask.tasks.kinds.regression import Regression
from polytask.tasks.kinds.token_classification import TokenClassification

import_submodules(__name__)

__all__ = ["IGNORE", "TASK_KINDS", "Classification", "MultiLabel", "Regression", "TaskKind",
           "TokenClassification"]
