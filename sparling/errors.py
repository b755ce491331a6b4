"""Errors whose message already says what went wrong and what to do.

The command line prints these without a traceback; anything else is a bug and keeps its
traceback.
"""


class SparlingError(RuntimeError):
    """Base of the project's user-facing errors."""


class TrainingFailed(SparlingError):
    """The run stopped on an error it can name (e.g. a non-finite loss)."""
