"""MLflow's limits on what one run may hold, and values cut to them the same way every
time (so that a resumed run logs values equal to those it logged before)."""

from __future__ import annotations

import json
from typing import Any

from pipelines.tracking.errors import TrackingError

# As in mlflow.utils.validation (MLflow 3.x).
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
#: Params (or tags) and metric points sent in one ``log_batch`` call.
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000


def param_value(value: Any) -> str:
    """MLflow param text: strings as they are, everything else as JSON (``null``, ``true``,
    ``{}``), cut to MLflow's limit the same way every time (so a resume logs equal values)."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    if len(text) > MAX_PARAM_VALUE:
        marker = "...[truncated]"
        text = text[: MAX_PARAM_VALUE - len(marker)] + marker
    return text


def tag_value(value: Any) -> str:
    """Tag text, cut to MLflow's limit."""
    text = str(value)
    return text if len(text) <= MAX_TAG_VALUE else text[: MAX_TAG_VALUE - 3] + "..."


def check_key(key: str) -> str:
    """``key`` if MLflow takes it as a param, tag or metric key; else a :class:`TrackingError`."""
    if not key or len(key) > MAX_KEY:
        raise TrackingError(f"MLflow keys are 1 to {MAX_KEY} characters: {key[:80]!r}")
    return key
