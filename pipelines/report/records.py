"""The data types of a sweep report, and the vocabulary every part of it shares.

A report is built in steps, each in its own module: :mod:`.collect` reads the runs of a
sweep from MLflow into :class:`RunRecord` values, :mod:`.stats` groups and summarises
them into :class:`GroupSummary` values, :mod:`.tables` lays those out as :class:`Table`
values, and :mod:`.writers` and :mod:`.plots` write the files. Only :mod:`.collect`
talks to MLflow, so everything from the records on can be built and tested by hand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.tracking.metrics import read_metric

#: The motif and end-to-end errors, in table order.
ERRORS: tuple[str, ...] = ("fpe", "fne", "ce", "e2ee")
#: Everything summarised per group: the errors and the measured test density.
SUMMARY: tuple[str, ...] = (*ERRORS, "density")
LABEL = {"fpe": "FPE", "fne": "FNE", "ce": "CE", "e2ee": "E2EE", "density": "density"}

#: The interval separator inside formatted cells: an en dash that the writers turn into
#: "-" (text, markdown) or "--" (LaTeX), so one table serves every format.
RANGE_SEP = "\u2013"
MISSING = "n/a"


# --------------------------------------------------------------------------------------
# Data types
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A mean over seeds with its bootstrap interval, in the metric's own unit (fractions).

    ``n`` values entered it; ``omitted`` NaN values were left out.
    """

    mean: float
    low: float
    high: float
    n: int
    omitted: int = 0


@dataclass(frozen=True)
class CurvePoint:
    """One density step of a validation curve: per error, the mean over seeds.

    ``n`` is the number of runs that logged this density.
    """

    density: float
    means: dict[str, float]
    n: int


@dataclass(frozen=True)
class RunRecord:
    """One child run of a sweep, as read back from MLflow.

    ``metrics`` holds the latest value of every metric the run logged, under the MLflow
    names of :mod:`pipelines.tracking.metrics` (so ``test/ce`` etc. once it finished);
    ``history`` (read for finished runs only) the validation
    motif errors paired with the density trained at, one entry per density step, in
    step order.
    """

    mlflow_run_id: str
    run_id: str
    method: str
    domain: str
    seed: int | None
    swept: dict[str, Any]
    status: str
    failure: str | None
    metrics: dict[str, float]
    history: tuple[CurvePoint, ...] = ()
    start_time: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    """The run's params (its flattened resolved config), each read back as the value it was."""
    tags: dict[str, str] = field(default_factory=dict)
    """Every tag of the run."""

    def metric(self, key: str) -> float:
        """The latest value of metric ``key`` (under its name or, for a run tracked
        before it, its old one), or NaN when the run never logged it."""
        return read_metric(self.metrics, key)


@dataclass(frozen=True)
class GroupSummary:
    """The runs of one method at one combination of swept values, summarised.

    ``stats`` maps each of ``fpe, fne, ce, e2ee, density`` (``density`` is the measured
    test density) to an :class:`Interval` over the finished runs, or ``None`` when no
    finished run has a value. ``reached`` counts finished runs whose test checkpoint
    reached the domain's reported density.
    """

    method: str
    swept: dict[str, Any]
    runs: tuple[RunRecord, ...]
    stats: dict[str, Interval | None]
    reached: int

    @property
    def finished(self) -> tuple[RunRecord, ...]:
        return tuple(r for r in self.runs if r.status == "finished")

    @property
    def seeds(self) -> list[int | None]:
        """The seeds of the finished runs (those behind ``stats``)."""
        return [r.seed for r in self.finished]

    @property
    def n_seeds(self) -> int:
        return len(self.finished)

    @property
    def reached_reported(self) -> bool:
        """True when every finished run reached the reported density (and there is one)."""
        return 0 < self.n_seeds == self.reached

    @property
    def label(self) -> str:
        """``method`` alone, or ``method (field=value, ...)`` with each field's last part."""
        if not self.swept:
            return self.method
        inner = ", ".join(f"{_short(k)}={_fmt_value(v)}" for k, v in self.swept.items())
        return f"{self.method} ({inner})"


@dataclass(frozen=True)
class SweepCounts:
    """How complete a sweep is: runs expected by the sweep file against runs in MLflow."""

    expected: int
    present: int
    finished: int
    failed: int
    running: int
    stopped: int = 0
    """Runs told to stop (the deadline, a signal) before they finished: they resume."""

    @property
    def missing(self) -> int:
        return max(self.expected - self.present, 0)

    @property
    def partial(self) -> bool:
        return self.finished < self.expected

    def describe(self) -> str:
        """E.g. ``partial: 15 of 18 expected runs finished (1 failed, 1 running, 1 missing)``."""
        state = "partial" if self.partial else "complete"
        text = f"{state}: {self.finished} of {self.expected} expected runs finished"
        parts = [
            f"{n} {what}"
            for n, what in (
                (self.failed, "failed"),
                (self.running, "running"),
                (self.stopped, "stopped"),
                (self.missing, "missing"),
            )
            if n
        ]
        return f"{text} ({', '.join(parts)})" if parts else text


@dataclass(frozen=True)
class Table:
    """One table in display form (``rows``) and in numeric form (``csv_rows``).

    Display cells use :data:`RANGE_SEP` between interval bounds; ``numeric`` says which
    display columns are right-aligned.
    """

    name: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: tuple[bool, ...]
    csv_columns: tuple[str, ...]
    csv_rows: tuple[tuple[Any, ...], ...]

    def text_rows(self) -> list[list[str]]:
        return [[c.replace(RANGE_SEP, "-") for c in row] for row in self.rows]


@dataclass
class Report:
    """Everything :func:`build_report` read and wrote for one sweep."""

    tracking_uri: str
    experiment: str
    sweep_name: str
    parent_run_id: str
    swept_fields: list[str]
    runs: list[RunRecord]
    groups: list[GroupSummary]
    sensitivity: dict[str, list[GroupSummary]]
    curves: dict[str, list[CurvePoint]]
    counts: SweepCounts
    out_dir: Path
    notes: list[str] = field(default_factory=list)
    tables: dict[str, Table] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    frame: Any = None
    """The sweep's runs as a DataFrame (:func:`pipelines.report.frame.records_frame`, what
    :func:`pipelines.report.runs_frame` returns): what the tables are made from."""

    @property
    def partial(self) -> bool:
        return self.counts.partial

    @property
    def failed(self) -> list[RunRecord]:
        return [r for r in self.runs if r.status == "failed"]

    def status_line(self) -> str:
        return (
            f"sweep {self.sweep_name!r} (experiment {self.experiment!r}): {self.counts.describe()}"
        )


# --------------------------------------------------------------------------------------
# Cell text shared by the data types and the tables
# --------------------------------------------------------------------------------------


def _short(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def _fmt_value(v: Any) -> str:
    if v is None:
        return MISSING
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, str):
        return v
    return json.dumps(v)
