"""Exceptions that name the problem and the fix.

Every user-facing failure in ltrobust raises a subclass of :class:`LtrobustError`; the CLI prints its
message (no traceback) and exits with status 2.
"""

from __future__ import annotations


class LtrobustError(Exception):
    """Base class of every error ltrobust raises on bad input or a broken file."""


class ConfigError(LtrobustError, ValueError):
    """A configuration key or value is invalid (unknown key, out-of-range value, unknown name)."""


class DataError(LtrobustError):
    """A data set is missing, unreadable or inconsistent with the run."""


class CheckpointError(LtrobustError):
    """A checkpoint or result file is missing, truncated, corrupt or does not match the run."""


class TrainingDiverged(LtrobustError):
    """The training loss became non-finite."""


class RunInUse(LtrobustError):
    """Another ltrobust process is writing the same run folder (or the same evaluation tag)."""
