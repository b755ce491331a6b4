"""A sweep's runs as a pandas DataFrame, for notebooks: :func:`runs_frame`.

One row per run of the sweep (per config hash, a retried run's best attempt, in report
order), read back from MLflow like the report (:func:`~pipelines.report.collect.read_sweep`)::

    from pipelines.report import runs_frame

    df = runs_frame("quickstart")                      # the sweep's name, or its file
    df = runs_frame("paper-digit-circle.yaml", work_dir="results/digit-circle")
    df.groupby("method")["metrics.test/ce"].mean()

Columns: ``run_id`` (the config hash), ``mlflow_run_id``, ``method``, ``domain``,
``seed``, ``status`` (``finished``, ``failed``, ``running``, ``stopped``), ``failure``, ``start_time``
(a UTC timestamp), then ``swept.<field>`` for each swept field (the value the report
groups the run by), ``config.<field>`` for every field of the resolved run config (its
value, not MLflow's text: ``config.schedule.delta_update`` is a float), then
``metrics.<name>`` for every metric (the latest value, under the current names of
:mod:`pipelines.tracking.metrics`, so runs tracked under the older names line up), then
``tags.<key>``. ``df.attrs`` holds ``sweep``, ``experiment``, ``parent_run_id``,
``swept_fields``, ``counts`` (expected, present, finished, failed, running, stopped, missing) and
``notes`` (what the report would say about the runs read).

The report is made from this very frame (:func:`sweep_frame`): its groups and their
statistics (:func:`pipelines.report.stats.groups_of`) and its per-seed table read these
columns, so a notebook's ``groupby`` and the report's tables cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.report.records import RunRecord
from pipelines.tracking.metrics import canonical_metrics

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.report.collect import Sweep

#: The columns every frame starts with, in order.
RUN_COLUMNS = (
    "run_id",
    "mlflow_run_id",
    "method",
    "domain",
    "seed",
    "status",
    "failure",
    "start_time",
)


def records_frame(runs: Sequence[RunRecord], swept_fields: Sequence[str] = ()) -> pd.DataFrame:
    """Run records (:class:`~pipelines.report.records.RunRecord`) as a DataFrame with the
    columns described in :mod:`pipelines.report.frame` (``swept.<field>`` for each of
    ``swept_fields``), one row per record in their order; no MLflow needed."""
    import pandas as pd

    config = sorted({k for r in runs for k in r.params})
    metrics = sorted({k for r in runs for k in canonical_metrics(r.metrics)})
    tags = sorted({k for r in runs for k in r.tags})
    rows: list[dict[str, Any]] = []
    for r in runs:
        row: dict[str, Any] = {
            "run_id": r.run_id,
            "mlflow_run_id": r.mlflow_run_id,
            "method": r.method,
            "domain": r.domain,
            "seed": r.seed,
            "status": r.status,
            "failure": r.failure,
            "start_time": pd.Timestamp(r.start_time, unit="ms", tz="UTC"),
        }
        row.update({f"config.{k}": r.params.get(k) for k in config})
        row.update({f"metrics.{k}": r.metric(k) for k in metrics})
        row.update({f"tags.{k}": r.tags.get(k) for k in tags})
        rows.append(row)
    columns = [
        *RUN_COLUMNS,
        *(f"config.{k}" for k in config),
        *(f"metrics.{k}" for k in metrics),
        *(f"tags.{k}" for k in tags),
    ]
    frame = pd.DataFrame(rows, columns=columns)
    frame["seed"] = frame["seed"].astype("Int64")  # a run without a seed tag: <NA>
    # the swept values as they are (objects: no int made float, no missing one made NaN)
    swept = {
        f"swept.{f}": pd.Series([r.swept.get(f) for r in runs], index=frame.index, dtype=object)
        for f in swept_fields
    }
    position = len(RUN_COLUMNS)
    for i, (name, values) in enumerate(swept.items()):
        frame.insert(position + i, name, values)
    return frame


def sweep_frame(sweep: Sweep, name: str, experiment: str, notes: Sequence[str]) -> pd.DataFrame:
    """A sweep read back from MLflow (:func:`~pipelines.report.collect.read_sweep`) as its
    frame: :func:`records_frame` of its runs with the sweep's facts in ``attrs``."""
    frame = records_frame(sweep.runs, sweep.swept_fields)
    c = sweep.counts
    frame.attrs.update(
        sweep=name,
        experiment=experiment,
        parent_run_id=sweep.parent_run_id,
        swept_fields=list(sweep.swept_fields),
        counts={
            "expected": c.expected,
            "present": c.present,
            "finished": c.finished,
            "failed": c.failed,
            "running": c.running,
            "stopped": c.stopped,
            "missing": c.missing,
        },
        notes=list(notes),
    )
    return frame


def column(frame: pd.DataFrame, name: str) -> list[float]:
    """The values of metric column ``name`` (``metrics.<metric>``) as floats, NaN where a
    run has none (all NaN when no run logged the metric)."""
    if name not in frame.columns:
        return [math.nan] * len(frame)
    return [float(v) for v in frame[name].astype(float)]


def runs_frame(
    sweep: str,
    work_dir: Path | str | None = None,
    *,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    mlflow_config: Path | str | None = None,
) -> pd.DataFrame:
    """The runs of sweep ``sweep`` (its name, or its file) as a DataFrame.

    Where they are tracked: ``tracking_uri`` (and ``experiment``, by default the one the
    tracking settings name for the sweep) if given, else the tracking settings of
    ``work_dir`` (default: ``$SPARLING_WORK_DIR``, else ``sparling-work``): its local
    store through the local server (started for the call if none runs), or the
    configured server.

    Raises:
        SparlingError: no such store, experiment or sweep (the message lists those that
            exist).
    """
    from pipelines.report.collect import read_sweep

    name = _sweep_name(sweep)
    notes: list[str] = []
    if tracking_uri is not None:
        if experiment is None:
            experiment = _settings(work_dir, mlflow_config).experiment_for(sweep=name)
        read = read_sweep(tracking_uri, experiment, name, notes)
    else:
        from pipelines.tracking.server import tracking_uri as serve
        from pipelines.tracking.settings import missing_local_store
        from sparling.errors import SparlingError

        settings = _settings(work_dir, mlflow_config)
        if (store := missing_local_store(settings)) is not None:
            raise SparlingError(
                f"no MLflow tracking store at {store}: nothing was tracked in work dir "
                f"{settings.work_dir}"
            )
        experiment = experiment or settings.experiment_for(sweep=name)
        with serve(settings) as uri:
            read = read_sweep(uri, experiment, name, notes)
    return sweep_frame(read, name, experiment, notes)


def _settings(work_dir: Path | str | None, mlflow_config: Path | str | None = None) -> Any:
    from pipelines.cli import default_work_dir
    from pipelines.tracking.settings import load_settings

    work = Path(work_dir if work_dir is not None else default_work_dir())
    return load_settings(work, Path(mlflow_config) if mlflow_config is not None else None)


def _sweep_name(sweep: str) -> str:
    """A sweep's name: as given, or read from the sweep file it names."""
    path = Path(sweep)
    if path.is_file() or sweep.endswith((".yaml", ".yml")):
        from pipelines.plan import load_sweep

        return load_sweep(path).name
    return sweep
