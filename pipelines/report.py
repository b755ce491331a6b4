"""Sweep reports: comparison tables and plots read back from MLflow.

A sweep (see the sweep driver) logs one *parent* run per sweep and one *child* run per
training run to an MLflow experiment. :func:`build_report` reads those runs back through
:class:`mlflow.MlflowClient` (never from local run folders, so a report can be made on
any machine that reaches the tracking server), groups the runs by method and by the
values of every swept field, and writes into one folder:

- ``report.md``: every table, the plots linked, and a header saying whether the sweep is
  complete or *partial* (runs missing, failed or still running), with the counts;
- ``main.*``: the paper-style table (docs/method.md section 7): FPE, FNE, CE, E2EE and the
  measured density in %, each as the mean over seeds with a 95% percentile-bootstrap
  interval, e.g. ``1.48 [0.07-4.23]``; the number of seeds; how many reached the
  domain's reported density;
- ``per_seed.*``: every run (method, swept values, seed, status, test metrics, wall time);
- ``sensitivity-<field>.*``: for each swept field, its values x method;
- ``plots/*.png``: validation errors against density per group, CE per group with its
  interval, and one metric-against-value plot per swept field;
- ``*.csv`` (numbers, not formatted text) and ``*.tex`` (booktabs tables, plus a
  ``report.tex`` document that inputs them), as asked by ``formats``.

:func:`log_report` logs such a folder as the parent run's ``report/`` artifacts;
:func:`report_command` does both and returns the text the ``sparling report`` command
prints (:func:`format_main_table` is the table part of it).

Only finished runs enter the statistics; a group whose runs all failed still appears,
with ``n/a``. Intervals are :func:`sparling.metrics.bootstrap_ci` with 1,000 resamples
and seed 0, so a report is reproducible; NaN rates (undefined, e.g. FPE of a model that
predicts nothing) are left out of a mean and counted in the report's notes.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from pipelines.tracking import (
    TAG_DOMAIN,
    TAG_EXPECTED,
    TAG_FAILURE,
    TAG_KIND,
    TAG_METHOD,
    TAG_PARENT,
    TAG_RUN_ID,
    TAG_SEED,
    TAG_STATUS,
    TAG_SWEPT,
    TAG_SWEPT_FIELDS,
    redact_uri,
)
from pipelines.tracking import TAG_SWEEP as TAG_SWEEP_NAME
from sparling.errors import SparlingError
from sparling.metrics import bootstrap_ci

if TYPE_CHECKING:  # mlflow is imported lazily: `sparling --help` must stay fast
    from matplotlib.axes import Axes
    from mlflow import MlflowClient
    from mlflow.entities import Run

__all__ = [
    "BOOTSTRAP_SEED",
    "CONFIDENCE",
    "FORMATS",
    "N_RESAMPLES",
    "CurvePoint",
    "GroupSummary",
    "Interval",
    "Report",
    "RunRecord",
    "SweepCounts",
    "Table",
    "build_report",
    "format_main_table",
    "log_report",
    "report_command",
]

#: Output formats for the tables (plots are always written, as PNG).
FORMATS: tuple[str, ...] = ("md", "csv", "tex")
#: Bootstrap settings of every interval in a report (docs/method.md section 6).
N_RESAMPLES = 1000
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0

#: The motif and end-to-end errors, in table order.
ERRORS: tuple[str, ...] = ("fpe", "fne", "ce", "e2ee")
#: Everything summarised per group: the errors and the measured test density.
SUMMARY: tuple[str, ...] = (*ERRORS, "density")
LABEL = {"fpe": "FPE", "fne": "FNE", "ce": "CE", "e2ee": "E2EE", "density": "density"}

# The data contract with the sweep driver: the tags are defined in pipelines.tracking.
STATUSES = ("finished", "failed", "running")

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

    ``metrics`` holds the latest value of every metric the run logged (so ``test_ce``
    etc. once it finished); ``history`` (read for finished runs only) the validation
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

    def metric(self, key: str) -> float:
        """The latest value of ``key``, or NaN when the run never logged it."""
        return self.metrics.get(key, math.nan)


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
# Reading the sweep back from MLflow
# --------------------------------------------------------------------------------------


def _client(tracking_uri: str) -> MlflowClient:
    """A client for ``tracking_uri``, refusing a local store that does not exist.

    MLflow would silently create an empty database or folder for a mistyped path, and
    the user would then be told that the experiment is missing instead of the store.
    """
    from mlflow import MlflowClient

    parsed = urlparse(tracking_uri)
    local: Path | None = None
    if parsed.scheme == "sqlite":
        path = tracking_uri[len("sqlite:///") :] if tracking_uri.startswith("sqlite:///") else ""
        if path and path != ":memory:":
            local = Path(unquote(path))
    elif parsed.scheme == "file":
        local = Path(unquote(parsed.path))
    elif parsed.scheme == "" and tracking_uri:
        local = Path(tracking_uri)
    if local is not None and not local.exists():
        raise SparlingError(
            f"no MLflow tracking store at {redact_uri(tracking_uri)!r} ({local} does not exist)"
        )
    return MlflowClient(tracking_uri=tracking_uri)


def _search_all(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    """Every active run matching ``filter_string`` (search_runs is paginated)."""
    runs: list[Run] = []
    token: str | None = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=filter_string, max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _experiment_id(client: MlflowClient, tracking_uri: str, experiment: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        exp = client.get_experiment_by_name(experiment)
        if exp is not None and exp.lifecycle_stage == "active":
            return str(exp.experiment_id)
        names = sorted(e.name for e in client.search_experiments())
    except MlflowException as e:
        raise SparlingError(
            f"could not read experiments from {redact_uri(tracking_uri)!r}: {e}"
        ) from e
    deleted = " (it was deleted)" if exp is not None else ""
    raise SparlingError(
        f"no experiment {experiment!r} at {redact_uri(tracking_uri)!r}{deleted}; experiments there: "
        f"{', '.join(map(repr, names)) or 'none'}"
    )


def _find_parent(
    client: MlflowClient, experiment_id: str, experiment: str, sweep_name: str, notes: list[str]
) -> Run:
    # Sweep names are compared here rather than in the filter string, so that any name
    # works (no quoting rules) and the error can list the sweeps that do exist.
    parents = _search_all(client, experiment_id, f"tags.`{TAG_KIND}` = 'sweep'")
    matching = [p for p in parents if p.data.tags.get(TAG_SWEEP_NAME) == sweep_name]
    if not matching:
        found = sorted({p.data.tags.get(TAG_SWEEP_NAME, "?") for p in parents})
        raise SparlingError(
            f"no sweep {sweep_name!r} in experiment {experiment!r}; sweeps found: "
            f"{', '.join(map(repr, found)) or 'none'}"
        )
    # A sweep launched twice has two parent runs; the newest one is the sweep.
    matching.sort(key=lambda p: (p.info.start_time or 0, p.info.run_id), reverse=True)
    if len(matching) > 1:
        notes.append(
            f"{len(matching)} parent runs are named {sweep_name!r}; reporting the newest "
            f"({matching[0].info.run_id})."
        )
    return matching[0]


def _history(client: MlflowClient, run: Run) -> tuple[CurvePoint, ...]:
    """The val_* errors paired with the density logged at the same step."""
    keys = [f"val_{m}" for m in ERRORS if f"val_{m}" in run.data.metrics]
    if not keys or "density" not in run.data.metrics:
        return ()

    def by_step(key: str) -> dict[int, float]:
        # A resumed run may log a step twice: the latest timestamp wins.
        out: dict[int, tuple[int, float]] = {}
        for m in client.get_metric_history(run.info.run_id, key):
            if m.step not in out or m.timestamp >= out[m.step][0]:
                out[m.step] = (m.timestamp, m.value)
        return {step: value for step, (_, value) in out.items()}

    density = by_step("density")
    errors = {key[4:]: by_step(key) for key in keys}
    steps = sorted({s for values in errors.values() for s in values} & set(density))
    return tuple(
        CurvePoint(
            density=density[s],
            means={m: values[s] for m, values in errors.items() if s in values},
            n=1,
        )
        for s in steps
    )


def _record(client: MlflowClient, run: Run, fields: Sequence[str], notes: list[str]) -> RunRecord:
    tags = run.data.tags
    name = tags.get(TAG_RUN_ID, run.info.run_id)

    seed: int | None = None
    try:
        seed = int(tags[TAG_SEED])
    except (KeyError, ValueError):
        notes.append(f"run {name}: no integer {TAG_SEED} tag ({tags.get(TAG_SEED)!r}).")

    swept: dict[str, Any] = {}
    raw = tags.get(TAG_SWEPT)
    if raw:
        try:
            loaded = json.loads(raw)
            if not isinstance(loaded, dict):
                raise ValueError("not a JSON object")
            swept = loaded
        except ValueError:
            notes.append(f"run {name}: unreadable {TAG_SWEPT} tag {raw!r}.")
    elif fields:
        notes.append(f"run {name}: no {TAG_SWEPT} tag.")

    status = tags.get(TAG_STATUS)
    if status is None:  # an older or crashed driver: fall back on MLflow's own status
        status = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "failed"}.get(
            run.info.status, "running"
        )
    elif status not in STATUSES:
        notes.append(f"run {name}: unknown {TAG_STATUS} {status!r}, counted as running.")
        status = "running"

    return RunRecord(
        mlflow_run_id=run.info.run_id,
        run_id=name,
        method=tags.get(TAG_METHOD, "?"),
        domain=tags.get(TAG_DOMAIN, "?"),
        seed=seed,
        # Only the parent's swept fields, in its order. A field a run does not vary (the
        # other fields of a one-at-a-time ``vary`` axis) has its config's value, read from
        # the run's params (the resolved config); without one it stays None.
        swept={f: swept[f] if f in swept else _param(run.data.params, f) for f in fields},
        status=status,
        failure=tags.get(TAG_FAILURE) or (None if status != "failed" else "(no reason logged)"),
        metrics=dict(run.data.metrics),
        # Only finished runs enter the curves; skipping the others saves MLflow calls.
        history=_history(client, run) if status == "finished" else (),
        start_time=run.info.start_time or 0,
    )


def _param(params: dict[str, str] | None, key: str) -> Any:
    """A logged param as the value it was (params are JSON text, strings as they are)."""
    if not params or key not in params:
        return None
    try:
        return json.loads(params[key])
    except ValueError:
        return params[key]


def _deduplicate(records: list[RunRecord], notes: list[str]) -> list[RunRecord]:
    """One record per config hash: a retried run keeps its best, then newest, attempt."""
    rank = {"finished": 0, "running": 1, "failed": 2}
    by_id: dict[str, list[RunRecord]] = defaultdict(list)
    for r in records:
        by_id[r.run_id].append(r)
    kept = []
    for run_id, attempts in by_id.items():
        attempts.sort(key=lambda r: (rank[r.status], -r.start_time))
        kept.append(attempts[0])
        if len(attempts) > 1:
            notes.append(
                f"run {run_id}: {len(attempts)} attempts in MLflow; reporting the "
                f"{attempts[0].status} one ({attempts[0].mlflow_run_id})."
            )
    return kept


def _swept_fields(parent: Run, notes: list[str]) -> list[str]:
    raw = parent.data.tags.get(TAG_SWEPT_FIELDS, "[]")
    try:
        fields = json.loads(raw)
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            raise ValueError("not a JSON list of strings")
    except ValueError:
        notes.append(f"unreadable {TAG_SWEPT_FIELDS} tag on the parent run: {raw!r}.")
        return []
    return fields


# --------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------


def _summarise(values: Sequence[float]) -> Interval | None:
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return None
    mean, low, high = bootstrap_ci(
        kept, n_resamples=N_RESAMPLES, confidence=CONFIDENCE, seed=BOOTSTRAP_SEED
    )
    return Interval(mean, low, high, n=len(kept), omitted=len(values) - len(kept))


_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _natural(text: str) -> tuple[Any, ...]:
    """Sort key putting ``l1(coefficient=2.0)`` before ``l1(coefficient=10.0)``."""
    parts: list[Any] = []
    pos = 0
    for m in _NUMBER.finditer(text):
        parts += [(0, text[pos : m.start()], 0.0), (1, "", float(m.group()))]
        pos = m.end()
    parts.append((0, text[pos:], 0.0))
    return tuple(parts)


def _value_key(v: Any) -> tuple[int, float, str]:
    """Numbers sort numerically, then anything else by its JSON text, then missing."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        return (0, float(v), "")
    if v is None:
        return (2, 0.0, "")
    return (1, 0.0, json.dumps(v, sort_keys=True))


def _run_key(r: RunRecord) -> tuple[Any, ...]:
    return (
        _natural(r.method),
        tuple(_value_key(v) for v in r.swept.values()),
        r.seed if r.seed is not None else math.inf,
        r.run_id,
    )


def _group(runs: Iterable[RunRecord], fields: Sequence[str]) -> list[GroupSummary]:
    """Group runs by method and the values of ``fields`` (pooling over any other field)."""
    groups: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for r in runs:
        # JSON text as the key: swept values may be lists or dicts (unhashable).
        values = json.dumps([r.swept.get(f) for f in fields], sort_keys=True)
        groups[(r.method, values)].append(r)
    out = []
    for (method, values), members in groups.items():
        members.sort(key=_run_key)
        finished = [r for r in members if r.status == "finished"]
        stats = {m: _summarise([r.metric(f"test_{m}") for r in finished]) for m in SUMMARY}
        out.append(
            GroupSummary(
                method=method,
                swept=dict(zip(fields, json.loads(values))),
                runs=tuple(members),
                stats=stats,
                reached=sum(r.metric("test_reached_reported") == 1.0 for r in finished),
            )
        )
    out.sort(key=lambda g: (_natural(g.method), tuple(_value_key(v) for v in g.swept.values())))
    return out


def _balanced(runs: Sequence[RunRecord], f: str, fields: Sequence[str]) -> list[RunRecord]:
    """The runs that compare values of ``f`` fairly: those whose method and other swept
    fields take values that occur with every value of ``f``.

    For crossed axes that is every run (pooled over the others); for a one-at-a-time
    ``vary`` axis it is the runs varying ``f`` and the base runs, not the runs that vary
    another field (whose ``f`` is the base value). If no combination of the others occurs
    with every value, all runs are pooled.
    """
    others = [o for o in fields if o != f]

    def rest(r: RunRecord) -> str:
        return json.dumps([r.method] + [r.swept.get(o) for o in others], sort_keys=True)

    values_of = defaultdict(set)
    every: dict[str, set[str]] = defaultdict(set)
    for r in runs:
        v = json.dumps(r.swept.get(f), sort_keys=True)
        every[r.method].add(v)
        values_of[rest(r)].add(v)
    keep = [r for r in runs if values_of[rest(r)] == every[r.method]]
    return keep or list(runs)


def _curve(group: GroupSummary) -> list[CurvePoint]:
    """Mean validation errors over the group's finished runs at each density, high to low."""
    # Densities follow the same schedule in every seed but may differ in the last bits
    # after a resume or on another machine: match them on 6 significant digits.
    pooled: dict[float, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    densities: dict[float, list[float]] = defaultdict(list)
    for r in group.finished:
        for p in r.history:
            key = float(f"{p.density:.6g}")
            for m, v in p.means.items():
                if not math.isnan(v):
                    pooled[key][m].append(v)
            densities[key].append(p.density)
    return [
        CurvePoint(
            density=math.fsum(densities[d]) / len(densities[d]),
            means={m: math.fsum(v) / len(v) for m, v in pooled[d].items() if v},
            n=len(densities[d]),
        )
        for d in sorted(pooled, reverse=True)
    ]


# --------------------------------------------------------------------------------------
# Formatting
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


def _fmt_interval(iv: Interval | None, metric: str) -> str:
    """``1.48 [0.07–4.23]`` in %; the density with 3 significant digits; one seed: no interval."""
    if iv is None:
        return MISSING

    decimals = _density_decimals(iv.mean) if metric == "density" else 2

    def num(x: float) -> str:
        return f"{100 * x:.{decimals}f}"

    if iv.n == 1:  # a bootstrap over one value is that value: print no interval
        return num(iv.mean)
    return f"{num(iv.mean)} [{num(iv.low)}{RANGE_SEP}{num(iv.high)}]"


def _density_decimals(fraction: float) -> int:
    """Decimals showing a density in % to 3 significant digits (at least 2 decimals).

    Densities span 50% down to 0.005%, so a fixed number of decimals would print the
    interesting ones as 0.00; the bounds of an interval use the mean's decimals, so that
    ``0.00550 [0.00500-0.00600]`` reads as one scale.
    """
    pct = 100 * fraction
    if pct <= 0 or not math.isfinite(pct):
        return 2
    return max(2, 2 - math.floor(math.log10(pct)))


def _fmt_pct(x: float, metric: str = "") -> str:
    if math.isnan(x):
        return MISSING
    decimals = _density_decimals(x) if metric == "density" else 2
    return f"{100 * x:.{decimals}f}"


def _fmt_seconds(s: float) -> str:
    if math.isnan(s):
        return MISSING
    s = round(s)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h {m:02d}m" if h else (f"{m}m {sec:02d}s" if m else f"{sec}s")


def _pct(x: float | None) -> float | None:
    """A fraction as a percentage for the CSV files (empty cell when undefined).

    Rounded to 12 significant digits so that 0.07 prints as 7.0, not 7.000000000000001.
    """
    return None if x is None or math.isnan(x) else float(f"{100 * x:.12g}")


def _interval_csv(iv: Interval | None) -> list[float | None]:
    return [None, None, None] if iv is None else [_pct(iv.mean), _pct(iv.low), _pct(iv.high)]


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------


def _seeds_cell(g: GroupSummary) -> str:
    """The finished seeds behind a row, e.g. ``2`` or ``2 (+1 failed)``."""
    others = Counter(r.status for r in g.runs if r.status != "finished")
    extra = ", ".join(f"+{n} {status}" for status, n in sorted(others.items()))
    return f"{g.n_seeds} ({extra})" if extra else str(g.n_seeds)


def _summary_table(
    name: str, title: str, groups: Sequence[GroupSummary], fields: Sequence[str]
) -> Table:
    columns = (
        "method",
        *fields,
        "seeds",
        *(f"{LABEL[m]} (%)" for m in SUMMARY),
        "reached",
    )
    rows = []
    csv_rows = []
    for g in groups:
        rows.append(
            (
                g.method,
                *(_fmt_value(g.swept.get(f)) for f in fields),
                _seeds_cell(g),
                *(_fmt_interval(g.stats[m], m) for m in SUMMARY),
                f"{g.reached}/{g.n_seeds}",
            )
        )
        csv_rows.append(
            (
                g.method,
                *(g.swept.get(f) for f in fields),
                g.n_seeds,
                ";".join(str(s) for s in g.seeds),
                *(x for m in SUMMARY for x in _interval_csv(g.stats[m])),
                g.reached,
                sum(r.status == "failed" for r in g.runs),
                sum(r.status == "running" for r in g.runs),
            )
        )
    csv_columns = (
        "method",
        *fields,
        "n_seeds",
        "seeds",
        *(f"{m}_{part}_pct" for m in SUMMARY for part in ("mean", "low", "high")),
        "reached_reported",
        "failed",
        "running",
    )
    numeric = tuple(i > len(fields) for i in range(len(columns)))
    return Table(name, title, columns, tuple(rows), numeric, csv_columns, tuple(csv_rows))


def _per_seed_table(runs: Sequence[RunRecord], fields: Sequence[str]) -> Table:
    columns = (
        "method",
        *fields,
        "seed",
        "status",
        *(f"{LABEL[m]} (%)" for m in ERRORS),
        "accuracy (%)",
        "density (%)",
        "checkpoint density (%)",
        "reached",
        "wall time",
        "run",
    )
    rows = []
    csv_rows = []
    for r in runs:
        reached = r.metric("test_reached_reported")
        rows.append(
            (
                r.method,
                *(_fmt_value(r.swept.get(f)) for f in fields),
                MISSING if r.seed is None else str(r.seed),
                r.status,
                *(_fmt_pct(r.metric(f"test_{m}")) for m in ERRORS),
                _fmt_pct(r.metric("test_accuracy")),
                _fmt_pct(r.metric("test_density"), "density"),
                _fmt_pct(r.metric("test_checkpoint_density"), "density"),
                MISSING if math.isnan(reached) else ("yes" if reached == 1.0 else "no"),
                _fmt_seconds(r.metric("wall_seconds")),
                r.run_id,
            )
        )
        csv_rows.append(
            (
                r.method,
                *(r.swept.get(f) for f in fields),
                r.seed,
                r.status,
                *(_pct(r.metric(f"test_{m}")) for m in ERRORS),
                _pct(r.metric("test_accuracy")),
                _pct(r.metric("test_density")),
                _pct(r.metric("test_checkpoint_density")),
                None if math.isnan(reached) else int(reached == 1.0),
                None if math.isnan(r.metric("wall_seconds")) else r.metric("wall_seconds"),
                r.run_id,
                r.failure or "",
            )
        )
    csv_columns = (
        "method",
        *fields,
        "seed",
        "status",
        *(f"{m}_pct" for m in ERRORS),
        "accuracy_pct",
        "density_pct",
        "checkpoint_density_pct",
        "reached_reported",
        "wall_seconds",
        # No MLflow run id: the table then depends only on the sweep's results, so a
        # resumed sweep and a clean one give the same file (apart from wall time).
        "run_id",
        "failure",
    )
    first_numeric = len(fields) + 3  # method, fields, seed, status: text
    numeric = tuple(first_numeric <= i < len(columns) - 1 for i in range(len(columns)))
    return Table(
        "per_seed",
        "Per-seed test results",
        columns,
        tuple(rows),
        numeric,
        csv_columns,
        tuple(csv_rows),
    )


def _file_stem(text: str) -> str:
    # Letters, digits, "_" and "-" only: no spaces or "%" to trip LaTeX's \input and
    # \includegraphics, and no extra "." (which older graphicx misreads as the extension).
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")


def _label(text: str) -> str:
    # \label keys: letters, digits, ":" and "-" are safe with every package (babel too).
    return re.sub(r"[^A-Za-z0-9:-]+", "-", text)


def _sensitivity_name(field: str) -> str:
    """The table (and file) name of a swept field's sensitivity table."""
    return f"sensitivity-{_file_stem(field)}"


def _tables(report: Report) -> dict[str, Table]:
    fields = report.swept_fields
    tables = {
        "main": _summary_table(
            "main",
            f"Sweep {report.sweep_name}: test errors and density (%), mean over seeds "
            f"[{CONFIDENCE:.0%} bootstrap interval]",
            report.groups,
            fields,
        ),
        "per_seed": _per_seed_table(report.runs, fields),
    }
    for f, groups in report.sensitivity.items():
        # One row per (method, value), each method's values together.
        name = _sensitivity_name(f)
        tables[name] = _summary_table(name, f"Sensitivity to {f}", groups, [f])
    return tables


def _aligned(columns: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if right else c.ljust(w) for c, w, right in zip(cells, widths, numeric)
        ).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, rows)])


def format_main_table(report: Report) -> str:
    """The main table as aligned plain text (what ``sparling report`` prints)."""
    table = report.tables.get("main") or _tables(report)["main"]
    if not table.rows:
        return "(no runs)"
    return _aligned(table.columns, table.text_rows(), table.numeric)


# --------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------


def _md_table(table: Table) -> str:
    def cell(c: str) -> str:
        return c.replace("|", "\\|")

    align = ["---:" if right else "---" for right in table.numeric]
    lines = [
        "| " + " | ".join(cell(c) for c in table.columns) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join(cell(c) for c in row) + " |" for row in table.text_rows()),
    ]
    return "\n".join(lines)


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_TEX_SPECIAL = re.compile("|".join(re.escape(k) for k in _TEX_ESCAPES))


def _tex(text: str) -> str:
    return _TEX_SPECIAL.sub(lambda m: _TEX_ESCAPES[m.group()], text).replace(RANGE_SEP, "--")


def _tex_table(table: Table, sweep_name: str) -> str:
    spec = "".join("r" if right else "l" for right in table.numeric)
    lines = [
        "% Generated by pipelines/report.py; needs \\usepackage{booktabs}.",
        "\\begin{table}[htbp]",
        "\\centering",
        "\\small",
        f"\\caption{{{_tex(table.title)}}}",
        f"\\label{{tab:{_label(sweep_name)}:{_label(table.name)}}}",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(_tex(c) for c in table.columns) + " \\\\",
        "\\midrule",
        *(" & ".join(_tex(c) for c in row) + " \\\\" for row in table.rows),
        "\\bottomrule",
        "\\end{tabular}",
        "\\end{table}",
    ]
    return "\n".join(lines) + "\n"


def _write_csv(table: Table, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(table.csv_columns)
        for row in table.csv_rows:
            # Swept values that are lists or dicts go in as JSON, not Python reprs.
            writer.writerow(
                [
                    "" if v is None else json.dumps(v) if isinstance(v, list | dict) else v
                    for v in row
                ]
            )


def _reached_sentence(groups: Sequence[GroupSummary]) -> str:
    reached = [g.label for g in groups if g.reached_reported]
    short = [
        f"{g.label} {g.reached}/{g.n_seeds}" for g in groups if g.n_seeds and not g.reached_reported
    ]
    text = "Reached the domain's reported density (every seed): " + (", ".join(reached) or "none")
    if short:
        # Those seeds were tested at the lowest density they reached (the data contract).
        text += ". Not every seed (tested at the lowest density reached): " + ", ".join(short)
    return text + "."


def _failed_lines(report: Report) -> list[str]:
    lines = []
    for r in report.failed:
        where = ", ".join(f"{k}={_fmt_value(v)}" for k, v in r.swept.items())
        where = f" ({where})" if where else ""
        lines.append(f"{r.method}{where} seed {r.seed} [run {r.run_id}]: {r.failure}")
    return lines


def _markdown(report: Report, plots: dict[str, Path]) -> str:
    c = report.counts
    swept = ", ".join(["method", "seed", *report.swept_fields])
    out = [
        f"# Sweep report: {report.sweep_name}",
        "",
        f"- **Status: {c.describe()}**"
        + (" — the tables below cover the finished runs only." if c.partial else ""),
        f"- Experiment `{report.experiment}`, parent run `{report.parent_run_id}`, "
        f"tracking URI `{redact_uri(report.tracking_uri)}`.",
        f"- Swept: {swept}.",
        f"- Test metrics in %, mean over the finished seeds with a {CONFIDENCE:.0%} percentile "
        f"bootstrap interval ({N_RESAMPLES:,} resamples, seed {BOOTSTRAP_SEED}); one seed: "
        "no interval. Density: measured on the test set at the checkpoint evaluated.",
        "",
        "## Main table",
        "",
        _md_table(report.tables["main"]),
        "",
        _reached_sentence(report.groups),
        "",
    ]
    if report.failed:
        out += ["## Failed runs", ""]
        out += [f"- {line}" for line in _failed_lines(report)]
        out.append("")
    if "ce_by_method" in plots or "error_vs_density" in plots:
        out += ["## Plots", ""]
        for key, caption in (
            ("ce_by_method", "CE by method, with the bootstrap interval"),
            ("error_vs_density", "Validation errors against density, mean over seeds"),
            ("errors_per_method", "Each method's errors against density, mean over seeds"),
        ):
            if key in plots:
                out += [f"![{caption}]({plots[key].relative_to(report.out_dir).as_posix()})", ""]
    for f in report.sensitivity:
        out += [f"## Sensitivity: {f}", ""]
        others = [o for o in report.swept_fields if o != f]
        if others:
            out += [
                f"Other swept fields ({', '.join(others)}): the runs whose values of them "
                f"occur with every value of {f} (pooled over them when the axes are crossed; "
                "the base runs when each field is varied alone).",
                "",
            ]
        out += [_md_table(report.tables[_sensitivity_name(f)]), ""]
        if f"sensitivity:{f}" in plots:
            rel = plots[f"sensitivity:{f}"].relative_to(report.out_dir).as_posix()
            out += [f"![Errors against {f}]({rel})", ""]
    out += ["## Per-seed results", "", _md_table(report.tables["per_seed"]), ""]
    if report.notes:
        out += ["## Notes", ""] + [f"- {n}" for n in report.notes] + [""]
    return "\n".join(out)


def _tex_document(report: Report, table_files: Sequence[Path], plots: dict[str, Path]) -> str:
    lines = [
        "% Generated by pipelines/report.py",
        "\\documentclass{article}",
        "\\usepackage[margin=1.5cm,landscape]{geometry}",
        "\\usepackage{booktabs}",
        "\\usepackage{graphicx}",
        "\\begin{document}",
        f"\\section*{{Sweep {_tex(report.sweep_name)}}}",
        f"Status: {_tex(report.counts.describe())}.",
        "",
        *(f"\\input{{{p.name}}}" for p in table_files),
    ]
    for path in plots.values():
        rel = path.relative_to(report.out_dir).as_posix()
        lines += [
            "\\begin{figure}[htbp]",
            "\\centering",
            f"\\includegraphics[width=0.9\\linewidth]{{{rel}}}",
            "\\end{figure}",
        ]
    lines.append("\\end{document}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------

_STYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _method_colours(groups: Sequence[GroupSummary]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    methods = list(dict.fromkeys(g.method for g in groups))
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def _percent_ticks(ax: Axes) -> None:
    """Plain numbers (``0.01``, ``50``) on a log axis instead of ``10^-2``, ``5x10^1``."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    low, high = sorted(ax.get_xlim())
    # Within one decade there are too few major ticks, so label the minor ones too.
    ax.xaxis.set_minor_formatter(plain if high / low < 10 else NullFormatter())


def _plot_error_vs_density(report: Report, path: Path) -> bool:
    from matplotlib.figure import Figure

    curves = [(g, report.curves.get(g.label, [])) for g in report.groups]
    curves = [(g, c) for g, c in curves if c]
    if not curves:
        return False
    colours = _method_colours(report.groups)
    # Colour = method, line style = combination of swept values.
    combos = list(dict.fromkeys(json.dumps(g.swept, sort_keys=True) for g, _ in curves))
    fig = Figure(figsize=(11, 7), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True)
    for ax, m in zip(axes.flat, ERRORS):
        for g, curve in curves:
            points = [(p.density, p.means[m]) for p in curve if m in p.means]
            if not points:
                continue
            xs, ys = zip(*points)
            style = _STYLES[combos.index(json.dumps(g.swept, sort_keys=True)) % len(_STYLES)]
            ax.plot(
                [100 * x for x in xs],
                [100 * y for y in ys],
                style,
                marker="o",
                markersize=3,
                color=colours[g.method],
                label=g.label,
            )
        ax.set_xscale("log")
        _percent_ticks(ax)
        ax.set_title(f"validation {LABEL[m]}")
        ax.set_ylabel(f"{LABEL[m]} (%)")
        ax.grid(True, which="both", alpha=0.3)
    # Once, not per axis: the axes share x, and each inversion would undo the last.
    # Training goes from dense to sparse, so the curves then read left to right.
    axes[0, 0].invert_xaxis()
    for ax in axes[1]:
        ax.set_xlabel("density trained at (%, log scale; training runs left to right)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="outside lower center", ncols=min(3, len(labels)), fontsize="small"
    )
    fig.suptitle(f"Sweep {report.sweep_name}: validation errors against density (mean over seeds)")
    fig.savefig(path, dpi=110)
    return True


def _plot_errors_per_method(report: Report, path: Path) -> bool:
    """One panel per method (and swept values): FPE, FNE, CE and E2EE against the density
    trained at, mean over seeds, as the paper draws each domain."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    curves = [(g, report.curves.get(g.label, [])) for g in report.groups]
    curves = [(g, c) for g, c in curves if c]
    if not curves:
        return False
    cols = min(3, len(curves))
    rows = -(-len(curves) // cols)
    fig = Figure(figsize=(4.6 * cols, 3.4 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    colours = colormaps["tab10"]
    for ax, (g, curve) in zip(axes.flat, curves):
        for i, m in enumerate(ERRORS):
            points = [(p.density, p.means[m]) for p in curve if m in p.means]
            if points:
                xs, ys = zip(*points)
                ax.plot(
                    [100 * x for x in xs],
                    [100 * y for y in ys],
                    marker="o",
                    markersize=2.5,
                    color=colours(i),
                    label=LABEL[m],
                )
        ax.set_xscale("log")
        ax.invert_xaxis()
        _percent_ticks(ax)
        ax.set_ylim(-2, 102)
        n = max((p.n for p in curve), default=0)
        ax.set_title(f"{g.label} ({n} seed{'s' if n != 1 else ''})", fontsize=10)
        ax.set_xlabel("density trained at (%, log scale)")
        ax.set_ylabel("validation error (%)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="x-small", loc="upper right")
    for ax in list(axes.flat)[len(curves) :]:
        ax.set_visible(False)
    fig.suptitle(f"Sweep {report.sweep_name}: errors against density per method (mean over seeds)")
    fig.savefig(path, dpi=110)
    return True


def _plot_ce(report: Report, path: Path) -> bool:
    from matplotlib.figure import Figure

    groups = [g for g in report.groups if g.stats["ce"] is not None]
    if not groups:
        return False
    colours = _method_colours(report.groups)
    # Horizontal: group labels such as "l1(coefficient=1.0) (delta_update=0.75)" stay
    # readable however many groups there are, in the main table's order top to bottom.
    # Wide enough for the longest label beside a readable axis.
    width = max(9.0, 5.0 + 0.075 * max(len(g.label) for g in groups))
    fig = Figure(figsize=(width, 1.6 + 0.45 * len(groups)), layout="constrained")
    ax = fig.subplots()
    for y, g in enumerate(groups):
        iv = g.stats["ce"]
        assert iv is not None
        ax.errorbar(
            [100 * iv.mean],
            [y],
            xerr=[[100 * (iv.mean - iv.low)], [100 * (iv.high - iv.mean)]],
            fmt="o",
            capsize=4,
            color=colours[g.method],
        )
        ax.annotate(
            f"{100 * iv.mean:.2f} (n={iv.n})",
            (100 * iv.high, y),
            textcoords="offset points",
            xytext=(6, 0),
            va="center",
            fontsize="small",
        )
    ax.set_yticks(range(len(groups)), [g.label for g in groups])
    ax.set_ylim(len(groups) - 0.5, -0.5)
    ax.set_xlim(left=0)
    ax.margins(x=0.15)
    ax.set_xlabel("test CE (%)")
    # On the figure, not the axes: a title over the axes alone is cut off when the
    # labels take most of the width.
    fig.suptitle(
        f"Sweep {report.sweep_name}: classification error (CE) per group\n"
        f"mean over seeds, {CONFIDENCE:.0%} bootstrap interval"
    )
    ax.grid(True, axis="x", alpha=0.3)
    fig.savefig(path, dpi=110)
    return True


def _plot_sensitivity(report: Report, f: str, path: Path) -> bool:
    from matplotlib.figure import Figure

    groups = report.sensitivity[f]
    values = sorted(
        {json.dumps(g.swept[f]) for g in groups}, key=lambda s: _value_key(json.loads(s))
    )
    decoded = [json.loads(v) for v in values]
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in decoded)
    # Numbers on a real axis (log when they span a factor of 20 or more), anything else
    # as evenly spaced categories.
    log = numeric and min(decoded) > 0 and max(decoded) / min(decoded) >= 20
    position = {v: (json.loads(v) if numeric else i) for i, v in enumerate(values)}
    colours = _method_colours(groups)
    fig = Figure(figsize=(13, 4), layout="constrained")
    axes: Sequence[Axes] = fig.subplots(1, len(ERRORS), sharex=True)
    drew = False
    for ax, m in zip(axes, ERRORS):
        for k, method in enumerate(dict.fromkeys(g.method for g in groups)):
            pts = [
                (position[json.dumps(g.swept[f])], iv)
                for g in groups
                if g.method == method and (iv := g.stats[m]) is not None
            ]
            if not pts:
                continue
            drew = True
            ax.errorbar(
                [x for x, _ in pts],
                [100 * iv.mean for _, iv in pts],
                yerr=[
                    [100 * (iv.mean - iv.low) for _, iv in pts],
                    [100 * (iv.high - iv.mean) for _, iv in pts],
                ],
                marker=_MARKERS[k % len(_MARKERS)],
                capsize=4,
                color=colours[method],
                label=method,
                alpha=0.85,
            )
        if log:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(values)), [_fmt_value(v) for v in decoded])
        else:
            ax.set_xticks(decoded, [_fmt_value(v) for v in decoded])
        ax.set_title(f"test {LABEL[m]}")
        ax.set_xlabel(f)
        ax.set_ylabel(f"{LABEL[m]} (%)")
        ax.grid(True, alpha=0.3)
    if not drew:
        return False
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize="small"
    )
    fig.suptitle(f"Sweep {report.sweep_name}: sensitivity to {f} (mean, {CONFIDENCE:.0%} interval)")
    fig.savefig(path, dpi=110)
    return True


def _plots(report: Report) -> dict[str, Path]:
    plot_dir = report.out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    path = plot_dir / "ce_by_method.png"
    if _plot_ce(report, path):
        written["ce_by_method"] = path
    path = plot_dir / "error_vs_density.png"
    if _plot_error_vs_density(report, path):
        written["error_vs_density"] = path
    path = plot_dir / "errors_per_method.png"
    if _plot_errors_per_method(report, path):
        written["errors_per_method"] = path
    for f in report.sensitivity:
        path = plot_dir / f"{_sensitivity_name(f)}.png"
        if _plot_sensitivity(report, f, path):
            written[f"sensitivity:{f}"] = path
    return written


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def _check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    if isinstance(formats, str):  # "md" would otherwise iterate as "m", "d"
        formats = (formats,)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"formats must be some of {FORMATS}, got {tuple(formats)!r}")
    return tuple(dict.fromkeys(formats))


def build_report(
    tracking_uri: str,
    experiment: str,
    sweep_name: str,
    out_dir: Path,
    formats: Sequence[str] = FORMATS,
) -> Report:
    """Read a sweep back from MLflow, summarise it, and write its report into ``out_dir``.

    Args:
        tracking_uri: the MLflow tracking URI (``sqlite:///...``, a folder, ``http://...``).
        experiment: the experiment holding the sweep.
        sweep_name: the ``sparling.sweep_name`` of the sweep's parent run.
        out_dir: the folder to write into (created; files of the same names replaced).
        formats: table formats among ``"md"``, ``"csv"``, ``"tex"``; plots are always made.

    Raises:
        SparlingError: the store, experiment or sweep does not exist (the message lists
            the experiments or sweeps that do).
        ValueError: an unknown format.
    """
    formats = _check_formats(formats)
    out_dir = Path(out_dir)
    client = _client(tracking_uri)
    notes: list[str] = []
    experiment_id = _experiment_id(client, tracking_uri, experiment)
    parent = _find_parent(client, experiment_id, experiment, sweep_name, notes)
    fields = _swept_fields(parent, notes)

    children = _search_all(client, experiment_id, f"tags.`{TAG_PARENT}` = '{parent.info.run_id}'")
    records = [
        _record(client, run, fields, notes)
        for run in children
        if run.data.tags.get(TAG_KIND, "run") == "run"
    ]
    runs = sorted(_deduplicate(records, notes), key=_run_key)

    raw_expected = parent.data.tags.get(TAG_EXPECTED)
    try:
        expected = int(raw_expected) if raw_expected is not None else len(runs)
    except ValueError:
        expected = len(runs)
        notes.append(f"unreadable {TAG_EXPECTED} tag {raw_expected!r}; using the runs found.")
    if raw_expected is None:
        notes.append(f"no {TAG_EXPECTED} tag on the parent run; missing runs cannot be counted.")
    if len(runs) > expected:
        notes.append(f"{len(runs)} runs found but the sweep expected {expected}.")
    status = Counter(r.status for r in runs)
    counts = SweepCounts(
        expected=expected,
        present=len(runs),
        finished=status["finished"],
        failed=status["failed"],
        running=status["running"],
    )

    groups = _group(runs, fields)
    report = Report(
        tracking_uri=tracking_uri,
        experiment=experiment,
        sweep_name=sweep_name,
        parent_run_id=parent.info.run_id,
        swept_fields=fields,
        runs=runs,
        groups=groups,
        sensitivity={f: _group(_balanced(runs, f, fields), [f]) for f in fields},
        curves={g.label: _curve(g) for g in groups},
        counts=counts,
        out_dir=out_dir,
        notes=notes,
    )
    for g in groups:
        for m in SUMMARY:
            iv = g.stats[m]
            if iv is not None and iv.omitted:
                notes.append(
                    f"{g.label}: {iv.omitted} undefined (NaN) {LABEL[m]} left out of the mean."
                )
    finished_without = [
        r.run_id for r in runs if r.status == "finished" and "test_ce" not in r.metrics
    ]
    if finished_without:
        notes.append(f"finished runs without test metrics: {', '.join(finished_without)}.")
    report.tables = _tables(report)

    out_dir.mkdir(parents=True, exist_ok=True)
    plots = _plots(report)
    files: list[Path] = list(plots.values())
    tables = list(report.tables.values())
    if "csv" in formats:
        for t in tables:
            path = out_dir / f"{t.name}.csv"
            _write_csv(t, path)
            files.append(path)
    if "tex" in formats:
        tex_files = []
        for t in tables:
            path = out_dir / f"{t.name}.tex"
            path.write_text(_tex_table(t, sweep_name), encoding="utf-8")
            tex_files.append(path)
        doc = out_dir / "report.tex"
        doc.write_text(_tex_document(report, tex_files, plots), encoding="utf-8")
        files += [*tex_files, doc]
    if "md" in formats:
        path = out_dir / "report.md"
        path.write_text(_markdown(report, plots), encoding="utf-8")
        files.append(path)
    report.files = files
    return report


def log_report(tracking_uri: str, parent_run_id: str, out_dir: Path) -> None:
    """Log the report folder ``out_dir`` as the ``report/`` artifacts of the sweep's parent run."""
    from mlflow.exceptions import MlflowException

    out_dir = Path(out_dir)
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        raise SparlingError(f"no report to log: {out_dir} is missing or empty")
    client = _client(tracking_uri)
    try:
        client.get_run(parent_run_id)
    except MlflowException as e:
        raise SparlingError(
            f"no MLflow run {parent_run_id!r} at {redact_uri(tracking_uri)!r}: {e}"
        ) from e
    client.log_artifacts(parent_run_id, str(out_dir), artifact_path="report")


def report_command(
    tracking_uri: str,
    experiment: str,
    sweep_name: str,
    out_dir: Path,
    formats: Sequence[str] = FORMATS,
) -> str:
    """Build the report, log it to the sweep's parent run, and return the text to print.

    The text: the sweep's status (``complete`` or ``partial`` with the counts), the main
    table, which groups reached the reported density, the failed runs with their
    reasons, and where the report was written and logged.
    """
    report = build_report(tracking_uri, experiment, sweep_name, out_dir, formats)
    logged = f"logged to MLflow run {report.parent_run_id} under artifacts 'report/'"
    try:
        log_report(tracking_uri, report.parent_run_id, report.out_dir)
    except Exception as e:  # the files are written: say why MLflow did not get them
        logged = (
            f"NOT logged to MLflow (the artifact store refused it: {str(e)[:300]}); run "
            f"`sparling report {sweep_name}` again once it is writable"
        )
    status = report.status_line()
    lines = [status.replace(": partial", ": PARTIAL", 1), "", format_main_table(report), ""]
    lines.append(_reached_sentence(report.groups))
    if report.failed:
        lines += ["", "Failed runs:"] + [f"  {line}" for line in _failed_lines(report)]
    lines += [
        "",
        f"Report written to {report.out_dir} ({', '.join(_check_formats(formats))}, plots); "
        f"{logged}.",
    ]
    return "\n".join(lines)
