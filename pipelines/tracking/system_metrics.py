"""System metrics of a training process: MLflow's own monitor, on the run's child run.

While a run trains, :func:`system_metrics` runs MLflow's system metrics monitor
(:class:`mlflow.system_metrics.system_metrics_monitor.SystemMetricsMonitor`, what
``mlflow.start_run(log_system_metrics=True)`` starts) on the run's child: every
``interval`` seconds it logs ``system/cpu_utilization_percentage``,
``system/system_memory_usage_megabytes`` and ``..._percentage``, disk and network usage
and, where an NVIDIA GPU and ``nvidia-ml-py`` are present, ``system/gpu_0_utilization_percentage``,
``system/gpu_0_memory_usage_megabytes`` and more. Its steps count samples of the monitor
(0, 1, 2, ...; a resumed run goes on from its last), not training samples.

The monitor is used directly rather than through ``mlflow.start_run``, which would make
the child the process's active run and end it as FINISHED when the process ends; the
child's status stays the sweep's to set. It stops by itself once the child is no longer
RUNNING. On by default; ``logging.system_metrics: false`` in ``mlflow.yaml`` turns it off.
Without ``psutil`` (which MLflow's monitor needs) nothing is logged and a warning says so.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Iterator, Mapping
from typing import Any

_log = logging.getLogger(__name__)

#: Seconds between two samples, by default.
DEFAULT_INTERVAL = 10.0


def start_monitor(uri: str, run_id: str, interval: float = DEFAULT_INTERVAL) -> Any | None:
    """Start MLflow's system metrics monitor on ``run_id``; ``None`` (with a warning) where
    ``psutil`` is missing. Call ``finish()`` on what it returns when the process is done."""
    if importlib.util.find_spec("psutil") is None:
        _log.warning(
            "system metrics of run %s not logged: MLflow's monitor needs psutil "
            "(pip install psutil)",
            run_id,
        )
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=interval, resume_logging=True, tracking_uri=uri
    )
    monitor.start()
    return monitor


@contextlib.contextmanager
def system_metrics(tracking: Mapping[str, Any] | None) -> Iterator[Any | None]:
    """System metrics on the child of ``tracking`` (a worker's ``{"uri", "run_id", ...}``
    with the options of :meth:`~pipelines.tracking.settings.TrackingSettings.run_options`)
    while the block runs; nothing without tracking or with ``system_metrics`` off. Yields
    the monitor (or ``None``)."""
    if not tracking or not tracking.get("system_metrics", True):
        yield None
        return
    interval = float(tracking.get("system_metrics_interval", DEFAULT_INTERVAL))
    try:
        monitor = start_monitor(tracking["uri"], tracking["run_id"], interval)
    except Exception as e:  # system metrics must never stop a run
        _log.warning("system metrics of run %s not logged: %s", tracking["run_id"], e)
        monitor = None
    try:
        yield monitor
    finally:
        if monitor is not None:
            monitor.finish()
