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

:func:`log_report` logs such a folder as the parent run's ``report/`` artifacts (and the
per-seed table as an MLflow table); :func:`runs_frame` gives a sweep's runs as a pandas
DataFrame for notebooks (:mod:`.frame`);
:func:`report_command` does both and returns the text the ``sparling report`` command
prints (:func:`format_main_table` is the table part of it).

Only finished runs enter the statistics; a group whose runs all failed still appears,
with ``n/a``. Intervals are :func:`sparling.metrics.bootstrap_ci` with 1,000 resamples
and seed 0, so a report is reproducible; NaN rates (undefined, e.g. FPE of a model that
predicts nothing) are left out of a mean and counted in the report's notes.

The steps live in modules of their own: :mod:`.records` (the data types), :mod:`.collect`
(reading the runs from MLflow and logging the report there: the only module that talks
to MLflow), :mod:`.stats` (groups, intervals, curves), :mod:`.tables`, :mod:`.writers`
(CSV, markdown, LaTeX) and :mod:`.plots` (matplotlib). All but :mod:`.collect` work on
records built by hand, without MLflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The names other modules and the tests import from ``pipelines.report``; ``x as x``
# marks those only re-exported here (the modules named above hold them).
from pipelines.report.collect import STATUSES as STATUSES
from pipelines.report.collect import _param as _param
from pipelines.report.collect import log_folder, log_table_file, read_sweep
from pipelines.report.frame import records_frame, runs_frame, sweep_frame
from pipelines.report.plots import _plots
from pipelines.report.records import ERRORS as ERRORS
from pipelines.report.records import LABEL, SUMMARY, Report
from pipelines.report.records import MISSING as MISSING
from pipelines.report.records import RANGE_SEP as RANGE_SEP
from pipelines.report.records import CurvePoint as CurvePoint
from pipelines.report.records import GroupSummary as GroupSummary
from pipelines.report.records import Interval as Interval
from pipelines.report.records import RunRecord as RunRecord
from pipelines.report.records import SweepCounts as SweepCounts
from pipelines.report.records import Table as Table
from pipelines.report.stats import BOOTSTRAP_SEED as BOOTSTRAP_SEED
from pipelines.report.stats import CONFIDENCE as CONFIDENCE
from pipelines.report.stats import N_RESAMPLES as N_RESAMPLES
from pipelines.report.stats import _balanced, _curve, _group, groups_of
from pipelines.report.stats import _summarise as _summarise
from pipelines.report.tables import _tables, format_main_table
from pipelines.report.writers import (
    FORMATS,
    _check_formats,
    _failed_lines,
    _reached_sentence,
    _write_tables,
)
from pipelines.tracking.metrics import TEST_CE, has_metric
from sparling.errors import SparlingError
from sparling.fileio import check_writable

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
    "per_seed_frame",
    "records_frame",
    "report_command",
    "runs_frame",
]

#: The per-seed table as an MLflow table of the sweep's parent run (the UI's table view,
#: ``mlflow.load_table``), beside the report folder's ``per_seed.csv``.
PER_SEED_TABLE = "report/per_seed_table.json"


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
        OSError: ``out_dir`` cannot be written (read-only, a file), before anything is read.
        ValueError: an unknown format.
    """
    formats = _check_formats(formats)
    out_dir = Path(out_dir)
    check_writable(out_dir, folder=True)  # a read-only or a file out_dir: said first
    notes: list[str] = []
    sweep = read_sweep(tracking_uri, experiment, sweep_name, notes)
    fields, runs = sweep.swept_fields, sweep.runs
    # the runs as runs_frame gives them: the groups and the tables are made from it
    frame = sweep_frame(sweep, sweep_name, experiment, notes)

    groups = groups_of(frame, runs, fields)
    report = Report(
        tracking_uri=tracking_uri,
        experiment=experiment,
        sweep_name=sweep_name,
        parent_run_id=sweep.parent_run_id,
        swept_fields=fields,
        runs=runs,
        groups=groups,
        sensitivity={f: _group(_balanced(runs, f, fields), [f]) for f in fields},
        curves={g.label: _curve(g) for g in groups},
        counts=sweep.counts,
        out_dir=out_dir,
        notes=notes,
        frame=frame,
    )
    for g in groups:
        for m in SUMMARY:
            iv = g.stats[m]
            if iv is not None and iv.omitted:
                notes.append(
                    f"{g.label}: {iv.omitted} undefined (NaN) {LABEL[m]} left out of the mean."
                )
    finished_without = [
        r.run_id for r in runs if r.status == "finished" and not has_metric(r.metrics, TEST_CE)
    ]
    if finished_without:
        notes.append(f"finished runs without test metrics: {', '.join(finished_without)}.")
    report.tables = _tables(report)

    out_dir.mkdir(parents=True, exist_ok=True)
    plots = _plots(report)
    report.files = [*plots.values(), *_write_tables(report, formats, plots)]
    return report


def log_report(
    tracking_uri: str, parent_run_id: str, out_dir: Path, report: Report | None = None
) -> None:
    """Log the report folder ``out_dir`` as the ``report/`` artifacts of the sweep's parent
    run; with the ``report`` built there, its per-seed table as the MLflow table
    :data:`PER_SEED_TABLE` as well (replaced, not appended to, when logged again)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        raise SparlingError(f"no report to log: {out_dir} is missing or empty")
    log_folder(tracking_uri, parent_run_id, out_dir)
    if report is not None and "per_seed" in report.tables:
        log_table_file(tracking_uri, parent_run_id, per_seed_frame(report), PER_SEED_TABLE)


def per_seed_frame(report: Report) -> Any:
    """The per-seed table (``per_seed.csv``'s columns and numbers) as a DataFrame."""
    import pandas as pd

    table = report.tables["per_seed"]
    return pd.DataFrame(list(table.csv_rows), columns=list(table.csv_columns))


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
        log_report(tracking_uri, report.parent_run_id, report.out_dir, report)
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
