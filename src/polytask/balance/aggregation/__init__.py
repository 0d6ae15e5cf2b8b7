"""Gradient aggregators: methods over the per-task gradient matrix. One file per method."""

from polytask.registry import import_submodules

import_submodules(__name__)
