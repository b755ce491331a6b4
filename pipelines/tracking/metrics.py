"""MLflow metric names: what each value of a run is logged as, grouped by ``/``.

The MLflow UI groups a run's charts by the part of a metric's name before its first
``/``. The run folder's records keep their own keys (``history.json``'s validation
records, ``evaluation.json``'s ``test_*``): :func:`mlflow_metrics` turns a record into
the names logged, at the MLflow boundary only.

=============  ===========================================================================
group          metrics
=============  ===========================================================================
``train/``     ``loss`` (the training loss of the batch at that step), ``lr`` (its
               learning rate), ``grad_norm`` (its gradients' global L2 norm, before
               clipping), every ``logging.train_every_steps`` optimizer steps of
               ``mlflow.yaml`` (and ``loss`` at each validation)
``val/``       ``exact_match``, ``e2ee``, ``density`` (measured), at each validation
``motif/``     ``fpe``, ``fne``, ``ce`` on validation inputs, at each density step
``schedule/``  ``density`` (what the bottleneck aimed at), ``threshold``,
               ``next_density``, at each validation
``time/``      ``wall_seconds`` (each validation's training wall time so far),
               ``total_wall_seconds`` (the run's, once, with the test metrics)
``test/``      ``fpe``, ``fne``, ``ce``, ``e2ee``, ``exact_match``, ``density``,
               ``checkpoint_density``, ``checkpoint_samples``, ``reached_reported``, once,
               at the step of the evaluated checkpoint's samples: the run's own
               evaluation (its reported-density checkpoint on its whole test split), what
               the report reads (a Retrained run's ``checkpoint_density`` is that of
               the checkpoint its frozen g came from)
``eval/``      ``fpe``, ``fne``, ``ce``, ``e2ee``, ``exact_match``, ``density``,
               ``checkpoint_density``, ``samples`` (test samples scored): an evaluation
               asked for by ``sparling evaluate`` (any checkpoint, any number of
               samples), at the step of its checkpoint's samples; never read as ``test/``
=============  ===========================================================================

Runs tracked before these names logged the record keys themselves (``val_accuracy``,
``test_ce``, ...). Whatever reads metrics back reads the new name and falls back on the
old one (:func:`read_metric`, :func:`canonical_metrics`, :func:`names_of`), so such runs,
and runs resumed across the change (old names up to some step, new ones after), read
the same.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# The names, one constant each (what the report and the tests read).
TRAIN_LOSS = "train/loss"
TRAIN_LR = "train/lr"
TRAIN_GRAD_NORM = "train/grad_norm"
VAL_EXACT_MATCH = "val/exact_match"
VAL_E2EE = "val/e2ee"
VAL_DENSITY = "val/density"
MOTIF_FPE = "motif/fpe"
MOTIF_FNE = "motif/fne"
MOTIF_CE = "motif/ce"
SCHEDULE_DENSITY = "schedule/density"
SCHEDULE_THRESHOLD = "schedule/threshold"
SCHEDULE_NEXT_DENSITY = "schedule/next_density"
WALL_SECONDS = "time/wall_seconds"
TOTAL_WALL_SECONDS = "time/total_wall_seconds"
TEST_FPE = "test/fpe"
TEST_FNE = "test/fne"
TEST_CE = "test/ce"
TEST_E2EE = "test/e2ee"
TEST_EXACT_MATCH = "test/exact_match"
TEST_DENSITY = "test/density"
TEST_CHECKPOINT_DENSITY = "test/checkpoint_density"
TEST_CHECKPOINT_SAMPLES = "test/checkpoint_samples"
TEST_REACHED_REPORTED = "test/reached_reported"
#: An evaluation's metric key (:class:`sparling.evaluate.Evaluation` ``metrics``) -> its
#: name when ``sparling evaluate`` logs it.
EVALUATION_TO_METRIC: dict[str, str] = {
    "fpe": "eval/fpe",
    "fne": "eval/fne",
    "ce": "eval/ce",
    "e2ee": "eval/e2ee",
    "accuracy": "eval/exact_match",
    "density": "eval/density",
    "checkpoint_density": "eval/checkpoint_density",
    "samples": "eval/samples",
}

#: A run record's key (validation record, evaluation) -> its MLflow metric name. The old
#: MLflow names are these keys.
RECORD_TO_METRIC: dict[str, str] = {
    "train_loss": TRAIN_LOSS,
    "val_accuracy": VAL_EXACT_MATCH,
    "val_e2ee": VAL_E2EE,
    "val_density": VAL_DENSITY,
    "val_fpe": MOTIF_FPE,
    "val_fne": MOTIF_FNE,
    "val_ce": MOTIF_CE,
    "density": SCHEDULE_DENSITY,
    "threshold": SCHEDULE_THRESHOLD,
    "next_density": SCHEDULE_NEXT_DENSITY,
    "wall_seconds": WALL_SECONDS,
    "total_wall_seconds": TOTAL_WALL_SECONDS,
    "test_fpe": TEST_FPE,
    "test_fne": TEST_FNE,
    "test_ce": TEST_CE,
    "test_e2ee": TEST_E2EE,
    "test_accuracy": TEST_EXACT_MATCH,
    "test_density": TEST_DENSITY,
    "test_checkpoint_density": TEST_CHECKPOINT_DENSITY,
    "test_checkpoint_samples": TEST_CHECKPOINT_SAMPLES,
    "test_reached_reported": TEST_REACHED_REPORTED,
}
#: The MLflow name -> the name runs tracked before it logged.
OLD_NAMES: dict[str, str] = {new: old for old, new in RECORD_TO_METRIC.items()}
#: Every metric name the project logs (besides MLflow's own ``system/*``).
METRICS: tuple[str, ...] = (
    *RECORD_TO_METRIC.values(),
    TRAIN_LR,
    TRAIN_GRAD_NORM,
    *EVALUATION_TO_METRIC.values(),
)

#: A record's keys that are not metrics: the step itself.
STEP_KEY = "samples"


def metric_name(key: str) -> str:
    """The MLflow name of a record key; a key with no name here is logged as it is."""
    return RECORD_TO_METRIC.get(key, key)


def mlflow_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """A record's numeric values under their MLflow names (``samples``, the step, and
    anything not a number, such as a checkpoint's name, left out)."""
    return {
        metric_name(k): float(v)
        for k, v in record.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != STEP_KEY
    }


def evaluation_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """An evaluation's metrics (``sparling evaluate``) under their ``eval/`` names."""
    return {
        name: float(metrics[key]) for key, name in EVALUATION_TO_METRIC.items() if key in metrics
    }


def names_of(name: str) -> tuple[str, ...]:
    """The names a metric may be stored under: the name, then the old one if it had one."""
    old = OLD_NAMES.get(name)
    return (name, old) if old else (name,)


def read_metric(metrics: Mapping[str, float], name: str) -> float:
    """The value of metric ``name`` in a run's metrics (new name first, then the old
    one); NaN when the run has neither."""
    for n in names_of(name):
        if n in metrics:
            return float(metrics[n])
    return math.nan


def has_metric(metrics: Mapping[str, float], name: str) -> bool:
    """Whether a run's metrics hold ``name`` under its new or its old name."""
    return any(n in metrics for n in names_of(name))


def canonical_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """A run's metrics under the current names: an old name is read as its new one where
    the new one is absent (a run tracked before the rename) and dropped; other names
    are kept as they are."""
    out = {k: float(v) for k, v in metrics.items() if k not in RECORD_TO_METRIC}
    for old, new in RECORD_TO_METRIC.items():
        if new not in out and old in metrics:
            out[new] = float(metrics[old])
    return out
