"""The errors tracking raises: each message says what went wrong and what to do."""

from __future__ import annotations

from sparling.errors import SparlingError


class TrackingError(SparlingError):
    """Tracking could not do what was asked; the message says why and what to do."""


class TrackingConfigError(TrackingError, ValueError):
    """A bad settings file, key or environment variable (named in the message)."""


class TrackingServerError(TrackingError):
    """The local tracking server did not start, or a live one could not be used."""
