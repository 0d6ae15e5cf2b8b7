"""Errors a user can act on. The CLI prints these without a traceback."""

from __future__ import annotations


class PolytaskError(Exception):
    """Base of every error whose message tells the user what to fix."""


class ConfigError(PolytaskError):
    """A config field has a bad value; the message names the field, the value and a fix."""


class DataError(PolytaskError):
    """A dataset, column or label is missing or malformed."""


class CheckpointError(PolytaskError):
    """A checkpoint cannot be read (missing, truncated or corrupt)."""


class TrainingError(PolytaskError):
    """Training cannot go on (for example a NaN loss); the last good checkpoint is kept."""


class StorageError(PolytaskError):
    """A file cannot be written: the disk is full, a quota or a file size limit is reached.

    The half-written file is removed and the previous version of it (if any) is kept."""
