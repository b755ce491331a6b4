"""MLflow tracking for sweeps and runs: settings, the local tracking server, the run API.

Each part is usable alone, one module each:

==========================================  ==============================================
:mod:`~pipelines.tracking.settings`         :func:`load_settings` reads ``mlflow.yaml``
                                            (profiles ``local`` and ``server``) into
                                            :class:`TrackingSettings`; :func:`worker_env`
:mod:`~pipelines.tracking.server`           :class:`LocalTrackingServer`, the one
                                            ``mlflow server`` process that owns a local
                                            store, shared through leases;
                                            :func:`tracking_uri`
:mod:`~pipelines.tracking.finder`           :class:`Tracker`: experiments, parent and
                                            child runs found again by their tags
:mod:`~pipelines.tracking.logger`           :class:`MetricLogger`, the worker-side
                                            batched, retrying logger, and its spool
                                            (:func:`append_to_spool`)
:mod:`~pipelines.tracking.tags`             the tag contract between the sweep driver and
                                            the report (``TAG_*``), :func:`run_name`,
                                            :func:`environment_tags`, UI links
:mod:`~pipelines.tracking.redaction`        credentials kept out of what is logged or
                                            printed (:func:`scrub`, :func:`redact_uri`)
:mod:`~pipelines.tracking.procs`            process and port helpers
                                            (:func:`free_port`, :func:`server_healthy`)
:mod:`~pipelines.tracking.metrics`          the metric names, grouped by ``/``
                                            (:func:`mlflow_metrics`), and reading runs
                                            tracked under the older names
                                            (:func:`read_metric`)
:mod:`~pipelines.tracking.datasets`         a run's datasets as MLflow dataset inputs,
                                            from their manifests
                                            (:func:`run_dataset_inputs`)
:mod:`~pipelines.tracking.system_metrics`   MLflow's system metrics monitor on a run
                                            (:func:`system_metrics`)
:mod:`~pipelines.tracking.models`           an exported model as a run's MLflow logged
                                            model (:func:`log_exported_model`)
:mod:`~pipelines.tracking.limits`           MLflow's limits on keys, values and batches
:mod:`~pipelines.tracking.errors`           :class:`TrackingError` and its kinds
==========================================  ==============================================

The names below are importable from this package too. Importing it loads neither MLflow
nor Ray: they are imported when a server, tracker or logger is used.
"""

from pipelines.tracking.errors import TrackingConfigError, TrackingError, TrackingServerError
from pipelines.tracking.finder import Tracker
from pipelines.tracking.limits import MAX_KEY, MAX_PARAM_VALUE, MAX_TAG_VALUE
from pipelines.tracking.logger import MetricLogger, append_to_spool
from pipelines.tracking.procs import free_port, server_healthy
from pipelines.tracking.redaction import REDACTED, is_secret_key, redact_uri, scrub
from pipelines.tracking.server import (
    SERVER_FILE,
    SERVER_LOG,
    LocalTrackingServer,
    ensure_writable,
    tracking_uri,
)
from pipelines.tracking.settings import (
    CONFIG_ENV,
    CREDENTIAL_ENVS,
    EXPERIMENT_ENV,
    PROFILE_ENV,
    SETTINGS_FILE,
    TRACKING_URI_ENV,
    TrackingSettings,
    load_settings,
    sqlite_path,
    worker_env,
)
from pipelines.tracking.tags import (
    EXPERIMENT_KIND,
    PROJECT_ROOT,
    TAG_COMMIT,
    TAG_DIRTY,
    TAG_DOMAIN,
    TAG_EXPECTED,
    TAG_EXPERIMENT_KIND,
    TAG_FAILURE,
    TAG_KIND,
    TAG_METHOD,
    TAG_PARENT,
    TAG_RUN_ID,
    TAG_SEED,
    TAG_STATUS,
    TAG_SWEEP,
    TAG_SWEPT,
    TAG_SWEPT_FIELDS,
    TAG_VERSIONS,
    UI_QUERY,
    environment_tags,
    experiment_url,
    run_name,
)

__all__ = [
    "CONFIG_ENV",
    "CREDENTIAL_ENVS",
    "EXPERIMENT_ENV",
    "EXPERIMENT_KIND",
    "MAX_KEY",
    "MAX_PARAM_VALUE",
    "MAX_TAG_VALUE",
    "PROFILE_ENV",
    "PROJECT_ROOT",
    "REDACTED",
    "SERVER_FILE",
    "SERVER_LOG",
    "SETTINGS_FILE",
    "TAG_COMMIT",
    "TAG_DIRTY",
    "TAG_DOMAIN",
    "TAG_EXPECTED",
    "TAG_EXPERIMENT_KIND",
    "TAG_FAILURE",
    "TAG_KIND",
    "TAG_METHOD",
    "TAG_PARENT",
    "TAG_RUN_ID",
    "TAG_SEED",
    "TAG_STATUS",
    "TAG_SWEEP",
    "TAG_SWEPT",
    "TAG_SWEPT_FIELDS",
    "TAG_VERSIONS",
    "TRACKING_URI_ENV",
    "UI_QUERY",
    "LocalTrackingServer",
    "MetricLogger",
    "Tracker",
    "TrackingConfigError",
    "TrackingError",
    "TrackingServerError",
    "TrackingSettings",
    "append_to_spool",
    "ensure_writable",
    "environment_tags",
    "experiment_url",
    "free_port",
    "is_secret_key",
    "load_settings",
    "redact_uri",
    "run_name",
    "scrub",
    "server_healthy",
    "sqlite_path",
    "tracking_uri",
    "worker_env",
]
