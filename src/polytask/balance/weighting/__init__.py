"""Loss weightings: methods that only need the task loss values. One file per method."""

from polytask.registry import import_submodules

import_submodules(__name__)
