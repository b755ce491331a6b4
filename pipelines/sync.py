"""Sync to MLflow: a sweep's runs, as their run folders hold them, written into MLflow.

One parent run per sweep, one child per planned run, found by the run's key (its config
hash) and never duplicated (the tag contract: :mod:`pipelines.tracking.tags`). Every step
is idempotent, so a sweep started again repairs what an interrupted one left:

- children a killed driver left RUNNING are marked KILLED (their runs resume);
- a run finished on disk whose child is not FINISHED (the driver died before MLflow heard
  of it, or the run was trained elsewhere, e.g. by the local executor with
  ``--no-tracking``) is logged now from its run folder: the points left in its metric
  spool, its saved evaluation, config and checkpoints;
- a run resumed from a copied run folder sends the validations its ``history.json`` holds
  from before (the metric logger drops points MLflow already has).

The executors call :func:`log_run_results` once a run is evaluated and
:func:`end_child` / :func:`mark_ended` when one fails or is stopped.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.plan import PlannedRun, Sweep
from pipelines.tracking.metrics import (
    TRAIN_GRAD_NORM,
    TRAIN_LOSS,
    TRAIN_LR,
    VAL_EXACT_MATCH,
    evaluation_metrics,
    has_metric,
    mlflow_metrics,
)
from pipelines.tracking.tags import (
    STATUS_FAILED,
    STATUS_FINISHED,
    STATUS_RUNNING,
    TAG_COMMIT,
    TAG_EXPECTED,
    TAG_FAILURE,
    TAG_RUN_ID,
    TAG_STATUS,
    TRAINING_TAGS,
    child_tags,
    parent_tags,
)
from sparling.runs import CHECKPOINTS_DIR, EVALUATION_DIR, RunFolder

if TYPE_CHECKING:
    from pipelines.tracking.logger import MetricLogger
    from pipelines.tracking.settings import TrackingSettings
    from sparling.config import RunConfig


@contextlib.contextmanager
def tracking_context(
    sweep: Sweep,
    work_dir: Path,
    todo: list[PlannedRun],
    outcomes: Mapping[str, Any] | None = None,
    settings: TrackingSettings | None = None,
    superseded: Mapping[str, str] | None = None,
) -> Iterator[tuple[dict[str, Any], str]]:
    """The tracking server (started or reused), the sweep's parent run and each run's child.

    ``settings``: where to track (default: :func:`~pipelines.tracking.settings.load_settings`
    of ``work_dir``). ``superseded``: run key -> why, for runs trained again from scratch
    (``--rerun changed``): their MLflow runs are set aside first
    (:meth:`~pipelines.tracking.finder.Tracker.supersede`), so that each gets a new child.

    Yields ``({"uri": ..., "runs": {run key: child id for each run of todo}, "options":
    what the workers log besides validations (:meth:`TrackingSettings.run_options`)},
    parent id)`` (:func:`run_tracking` makes one run's part of it for its worker);
    the runs of the sweep not in ``todo`` (finished on disk) are logged here if MLflow
    does not have them yet.

    The parent stands for every run the sweep has planned under its name: the runs of
    this start and those an earlier start planned (a start with ``--seeds`` or
    ``--methods`` plans a subset; their children stay under the parent and in its
    report), less runs of earlier configs (:meth:`~pipelines.tracking.finder.Tracker.
    mark_superseded`). Its ``sparling.expected_runs`` is set to their number at every
    start, and on leaving it ends ``FAILED`` if one of them failed (in ``outcomes``,
    filled in while inside, or as its child ended earlier), ``KILLED`` if one was stopped
    or is still to run, or the sweep was interrupted, else ``FINISHED``: a start that
    finishes a subset does not make a sweep with runs left look finished."""
    from pipelines.tracking.finder import Tracker
    from pipelines.tracking.server import tracking_uri
    from pipelines.tracking.settings import load_settings
    from pipelines.tracking.tags import environment_tags

    settings = settings or load_settings(work_dir)
    with tracking_uri(settings) as uri:
        tracker = Tracker(uri)
        experiment = tracker.experiment(
            settings.experiment_for(sweep=sweep.name), settings.experiment_artifact_location
        )
        env = environment_tags(source=f"sparling sweep {_relative(sweep.source)}")
        parent = tracker.parent_run(
            experiment, sweep.name, parent_tags(len(sweep.runs), sweep.swept_fields, sweep.source)
        )
        # the UI's User, Source and Version columns, and the code of the latest start
        tracker.set_tags(parent, env)
        log_sweep_files(tracker, parent, sweep)
        for key, reason in (superseded or {}).items():
            tracker.supersede(key, reason)
        # Children a killed driver left RUNNING: mark them KILLED; they resume below.
        tracker.mark_stale(parent, keep=set())
        # Runs of earlier configs under the names planned now: kept, left out of reports.
        tracker.mark_superseded(parent, {r.name: r.key for r in sweep.runs})
        runs: dict[str, str] = {}
        todo_keys = {r.key for r in todo}
        for run in sweep.runs:
            if run.key in todo_keys:
                continue
            # Finished on disk; if the driver died before MLflow heard of it (the run's
            # last step is logging its results), or the run was trained against another
            # store (its folder brought from another machine, the store made afresh), log
            # them now from the saved evaluation, after its validations (history.json,
            # for the report's curves) and the points its worker had not sent (its spool).
            child = tracker.find_child(parent, run.key)
            folder = RunFolder.for_config(run.config, work_dir)
            if child is None or child.info.status != "FINISHED":
                child_id = _child(tracker, experiment, parent, run, env, work_dir)
                run_logger({"uri": uri, "run_id": child_id}, folder).close()
                saved = folder.read_evaluation() or {}
                log_run_results(tracker, child_id, run, work_dir, saved)
            elif not has_validations(child.data.metrics) and folder.read_history():
                # logged from its evaluation alone by an earlier version of this code
                run_logger({"uri": uri, "run_id": child.info.run_id}, folder).close()
        for run in todo:
            trains = RunFolder.for_config(run.config, work_dir).read_result() is None
            runs[run.key] = _child(tracker, experiment, parent, run, env, work_dir, trains)
        earlier = planned_before(tracker, parent, {r.key for r in sweep.runs})
        expected = len({r.key for r in sweep.runs}) + len(earlier)
        tracker.set_tags(parent, {TAG_EXPECTED: str(expected)})
        tracker.set_status(parent, "RUNNING")
        try:
            yield {"uri": uri, "runs": runs, "options": settings.run_options()}, parent
        except BaseException as e:
            # interrupted (Ctrl-C, SIGTERM) or the driver itself failed
            interrupted = isinstance(e, (KeyboardInterrupt, SystemExit))
            tracker.set_terminated(parent, "KILLED" if interrupted else "FAILED")
            raise
        tracker.set_terminated(parent, parent_status({**earlier, **(outcomes or {})}))


def parent_status(outcomes: Mapping[str, Any]) -> str:
    """The sweep parent's MLflow status from its runs' outcomes (``RunOutcome.status``, or
    the status alone): ``FAILED`` if any run failed, ``KILLED`` if any was stopped before
    it finished (a deadline, a stop request; they resume when the sweep runs again),
    else ``FINISHED``."""
    statuses = {getattr(o, "status", o) for o in outcomes.values()}
    if "failed" in statuses:
        return "FAILED"
    if "stopped" in statuses:
        return "KILLED"
    return "FINISHED"


#: what a child's MLflow status says of its run, for the parent's status (a child still
#: RUNNING outside any driver was marked KILLED first: its run is still to finish)
_CHILD_OUTCOME = {"FINISHED": "finished", "FAILED": "failed"}


def planned_before(tracker: Any, parent: str, planned: Collection[str]) -> dict[str, str]:
    """The runs of the sweep that earlier starts planned and this one does not
    (``planned``: its run keys), as their children under ``parent`` say: run key ->
    ``finished``, ``failed`` or ``stopped`` (KILLED or never ended: still to finish); a
    key with several children counts as its best one."""
    rank = {"finished": 0, "stopped": 1, "failed": 2}
    out: dict[str, str] = {}
    for child in tracker.current_children(parent):
        key = child.data.tags.get(TAG_RUN_ID)
        if not key or key in planned:
            continue
        status = _CHILD_OUTCOME.get(child.info.status, "stopped")
        if key not in out or rank[status] < rank[out[key]]:
            out[key] = status
    return out


#: Where a sweep's parent keeps the sweep file and the resolved plan (``plan.json``).
SWEEP_ARTIFACTS = "sweep"
PLAN_FILE = "plan.json"
#: The resolved run config in a child run (as in the run folder).
CONFIG_ARTIFACT = "config.json"


def log_sweep_files(tracker: Any, parent: str, sweep: Sweep) -> None:
    """The sweep file as given and the resolved plan (:func:`pipelines.plan.plan_document`)
    into the parent's ``sweep/`` artifacts; a sweep started again replaces them (the plan
    then lists what that start planned)."""
    from pipelines.plan import plan_document

    source = Path(sweep.source)
    if source.is_file():
        tracker.log_artifact(parent, source, SWEEP_ARTIFACTS)
    plan = json.dumps(plan_document(sweep), indent=2, sort_keys=True)
    tracker.log_text(parent, plan, f"{SWEEP_ARTIFACTS}/{PLAN_FILE}")


def _child(
    tracker: Any,
    experiment: str,
    parent: str,
    run: PlannedRun,
    env: dict[str, str],
    work_dir: Path,
    trains: bool = False,
) -> str:
    """Find or create the run's MLflow child under the sweep's parent; a new one gets the
    resolved config as ``config.json`` at once (the run folder's copy follows at the end)
    and its datasets as inputs. ``trains``: the run is about to train (resume), so an
    existing child records the code of now as what trained it."""
    config = run.config
    run_id, existed = tracker.child_run(
        experiment,
        parent,
        run.key,
        run.name,
        params=config.flat(),
        tags={**env, **child_tags(run.key, run.method, config.domain.name, run.seed, run.swept)},
    )
    if not existed:
        tracker.log_text(run_id, config.to_json(), CONFIG_ARTIFACT)
        log_datasets(tracker, run_id, run, work_dir)
        return str(run_id)
    # Planned again: what an earlier start ended it as (failed, with its reason) is not
    # what it is now; this start ends it again.
    tracker.set_tags(run_id, {TAG_STATUS: STATUS_RUNNING})
    tracker.delete_tag(run_id, TAG_FAILURE)
    if trains:
        tracker.set_tags(run_id, {k: v for k, v in env.items() if k in TRAINING_TAGS})
    return str(run_id)


def trained_commits(tracker: Any, keys: Iterable[str]) -> dict[str, str]:
    """Run key -> the git commit of the code that trained it, as its MLflow runs record it
    (``sparling.git_commit``; of the newest run of the key that has one); keys without one
    are left out."""
    out: dict[str, str] = {}
    for key in keys:
        runs = [
            r for r in tracker.runs_of(key) if r.data.tags.get(TAG_COMMIT, "unknown") != "unknown"
        ]
        if runs:
            newest = max(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))
            out[key] = newest.data.tags[TAG_COMMIT]
    return out


def log_datasets(tracker: Any, mlflow_run: str, run: PlannedRun, work_dir: Path) -> None:
    """The run's train, val and test datasets as the child's dataset inputs
    (:mod:`pipelines.tracking.datasets`); logging them again adds nothing."""
    from pipelines.tracking.datasets import run_dataset_inputs

    tracker.log_inputs(mlflow_run, run_dataset_inputs(run.config, work_dir))


def send_spool(uri: str, child: str, folder: RunFolder) -> None:
    """Send the points left in the run folder's metric spool to the run's child."""
    from pipelines.tracking.logger import MetricLogger

    MetricLogger(uri, child, spool=folder.spool_path).close()


def log_run_results(
    tracker: Any, mlflow_run: str, run: PlannedRun, work_dir: Path, metrics: dict[str, float]
) -> None:
    """A finished run's test metrics (``metrics``: its ``evaluation.json``, logged under
    the MLflow names), evaluation figures, config, density checkpoints and dataset inputs
    into its child, then the child FINISHED."""
    folder = RunFolder.for_config(run.config, work_dir)
    log_datasets(tracker, mlflow_run, run, work_dir)  # a child made before inputs were logged
    step = int(metrics["test_checkpoint_samples"])
    tracker.log_metrics(mlflow_run, mlflow_metrics(metrics), step)
    tracker.log_artifacts(mlflow_run, folder.evaluation_dir, EVALUATION_DIR)
    # the evaluated checkpoint, exported, as the run's logged model with its test metrics
    # (not for a run folder brought back without its checkpoints, `--pack`)
    if _has_model(folder):
        log_model(tracker, mlflow_run, folder, link_metrics=list(mlflow_metrics(metrics)))
    log_training_results(tracker, mlflow_run, folder)


def _has_model(folder: RunFolder) -> bool:
    """Whether the run folder holds the checkpoint :func:`log_model` exports by default."""
    if not folder.has_checkpoints():
        return False
    try:
        return folder.has_checkpoint(folder.select_checkpoint().name)
    except (OSError, ValueError):
        return False


def log_model(
    tracker: Any,
    mlflow_run: str,
    folder: RunFolder,
    *,
    density: float | None = None,
    export: Path | None = None,
    link_metrics: Collection[str] = (),
) -> str:
    """The run's model (its checkpoint at ``density``, chosen as ``sparling export`` does;
    or the file ``export`` already written) as the logged model of its MLflow run
    (:mod:`pipelines.tracking.models`); its points of ``link_metrics`` at the checkpoint's
    step linked to it with the test dataset. Returns the model's id."""
    import tempfile

    from pipelines.tracking.datasets import run_dataset_inputs
    from pipelines.tracking.models import log_exported_model
    from sparling.export import export_model, read_export_metadata

    config = folder.read_config()
    test = [
        i.dataset
        for i in run_dataset_inputs(config, folder.work_dir)
        if {t.key: t.value for t in i.tags}.get("mlflow.data.context") == "test"
    ]
    dataset = (test[0].name, test[0].digest) if test else None
    with tempfile.TemporaryDirectory(prefix="sparling-export-") as tmp:
        if export is None:
            export = Path(tmp) / "model.safetensors"
            export_model(folder.path, export, density=density)
        model_id, _ = log_exported_model(
            tracker.client,
            mlflow_run,
            export,
            read_export_metadata(export),
            link_metrics=link_metrics,
            dataset=dataset,
        )
    return model_id


def log_training_results(tracker: Any, mlflow_run: str, folder: RunFolder) -> None:
    """A trained run's config and density checkpoints into its MLflow run, then the run
    ``finished`` and FINISHED."""
    tracker.log_artifact(mlflow_run, folder.config_path)
    for ckpt in folder.density_checkpoint_folders():
        tracker.log_artifacts(mlflow_run, ckpt, f"{CHECKPOINTS_DIR}/{ckpt.name}")
    tracker.set_tags(mlflow_run, {TAG_STATUS: STATUS_FINISHED})
    tracker.set_terminated(mlflow_run, "FINISHED")


@contextlib.contextmanager
def standalone_tracking(
    config: RunConfig,
    work_dir: Path,
    settings: TrackingSettings,
    *,
    experiment: str | None = None,
    source: str | None = None,
) -> Iterator[dict[str, Any]]:
    """The MLflow run of one run trained alone (``sparling train``), for the block.

    The run is the one of the config's key in ``experiment`` (default: the settings'
    experiment for the domain and no sweep, ``sparling``), found again or created with the
    tags, params, config and dataset inputs a sweep gives its children
    (:meth:`~pipelines.tracking.finder.Tracker.standalone_run`), so that a sweep planning
    the same config finds it. Yields the worker's tracking dict (``{"uri", "run_id"}`` and
    the options) with ``"experiment"``, the experiment's name. When the block ends, the
    run's config and density checkpoints are logged and it is FINISHED; an error ends it
    FAILED with the reason, an interruption KILLED (it resumes)."""
    from pipelines.tracking.finder import Tracker
    from pipelines.tracking.server import tracking_uri
    from pipelines.tracking.tags import environment_tags, run_name

    run = PlannedRun(config=config, method=config.bottleneck.name, seed=config.seed)
    folder = RunFolder.for_config(config, work_dir)
    name = experiment or settings.experiment_for(domain=config.domain.name)
    with tracking_uri(settings) as uri:
        tracker = Tracker(uri)
        experiment_id = tracker.experiment(name, settings.experiment_artifact_location)
        env = environment_tags(source=source)
        tags = child_tags(run.key, run.method, config.domain.name, run.seed, {})
        mlflow_run, existed = tracker.standalone_run(
            experiment_id, run.key, run_name(run.method, run.seed), config.flat(), {**env, **tags}
        )
        if existed and folder.read_result() is None:  # trained on by the code of now
            tracker.set_tags(mlflow_run, {k: v for k, v in env.items() if k in TRAINING_TAGS})
        if existed:
            tracker.set_tags(mlflow_run, {TAG_STATUS: STATUS_RUNNING})
        else:
            tracker.log_text(mlflow_run, config.to_json(), CONFIG_ARTIFACT)
        log_datasets(tracker, mlflow_run, run, work_dir)
        if folder.spool_path.is_file():  # points an interrupted attempt did not send
            send_spool(uri, mlflow_run, folder)
        tracker.set_status(mlflow_run, "RUNNING")
        try:
            yield {
                **settings.run_options(),
                "uri": uri,
                "run_id": mlflow_run,
                "experiment": name,
            }
        except BaseException as e:
            from pipelines.train_job import RunStopped

            # Ctrl-C, or SIGTERM/SIGINT checkpointed by the workers: KILLED, it resumes
            interrupted = isinstance(e, (KeyboardInterrupt, SystemExit, RunStopped))
            end_child(tracker, mlflow_run, "stopped" if interrupted else "failed", str(e)[:500])
            raise
        if folder.spool_path.is_file():
            send_spool(uri, mlflow_run, folder)
        log_training_results(tracker, mlflow_run, folder)


def log_evaluation(
    settings: TrackingSettings,
    config: RunConfig,
    metrics: Mapping[str, float],
    out_dir: Path,
    checkpoint: str,
) -> list[str] | None:
    """An evaluation of a run's checkpoint (``sparling evaluate``) into every MLflow run of
    the run's key (a run trained alone, a sweep's children): its ``metrics``
    (:class:`sparling.evaluate.Evaluation`'s) as the ``eval/`` metrics at the step of the
    checkpoint's samples (``test/`` stays the run's own evaluation, which the report
    reads), the report folder ``out_dir`` as the artifacts ``evaluation/<checkpoint>/``.
    Returns the MLflow runs logged to; ``None`` when nothing is tracked where the settings
    point (no local store: none is made)."""
    from pipelines.tracking.finder import Tracker
    from pipelines.tracking.server import tracking_uri
    from pipelines.tracking.settings import missing_local_store

    if missing_local_store(settings) is not None:
        return None
    with tracking_uri(settings) as uri:
        tracker = Tracker(uri)
        runs = [r.info.run_id for r in tracker.runs_of(config.run_id())]
        step = int(metrics["checkpoint_samples"])
        for mlflow_run in runs:
            tracker.log_metrics(mlflow_run, evaluation_metrics(metrics), step)
            tracker.log_artifacts(mlflow_run, out_dir, f"{EVALUATION_DIR}/{checkpoint}")
    return runs


def end_child(tracker: Any, child: str, status: str, reason: str) -> None:
    """A failed run's child FAILED with the reason; a stopped one KILLED (it resumes).
    Never raises: the tracking server itself may be what failed."""
    try:
        if status == "failed":
            tracker.set_tags(child, {TAG_STATUS: STATUS_FAILED, TAG_FAILURE: reason})
        tracker.set_terminated(child, "FAILED" if status == "failed" else "KILLED")
    except Exception:
        pass


def mark_ended(tracking: dict[str, Any], run: PlannedRun, status: str, reason: str) -> None:
    """:func:`end_child` for ``run``'s child in ``tracking`` (``{"uri", "runs"}``)."""
    from pipelines.tracking.finder import Tracker

    child = tracking["runs"][run.key]
    try:
        tracker = Tracker(tracking["uri"])
    except Exception:  # the tracking server itself may be what failed
        return
    end_child(tracker, child, status, reason)


def has_validations(metrics: Mapping[str, float]) -> bool:
    """Whether a run's logged metrics (latest values, by name) hold a validation point."""
    return has_metric(metrics, VAL_EXACT_MATCH)


def validation_points(record: dict[str, Any]) -> dict[str, float]:
    """A validation record's metrics under their MLflow names
    (:mod:`pipelines.tracking.metrics`), as logged at the step of its sample count."""
    return mlflow_metrics(record)


def run_tracking(tracking: dict[str, Any], key: str) -> dict[str, Any]:
    """What the worker of run ``key`` needs of the sweep's ``tracking``: ``{"uri",
    "run_id"}`` (its child) and the options (e.g. ``train_every_steps``)."""
    return {**tracking.get("options", {}), "uri": tracking["uri"], "run_id": tracking["runs"][key]}


class TrainPoints:
    """The ``train/`` points of a run's training steps (:class:`sparling.train.Callbacks`
    ``on_progress`` info): ``train/loss``, ``train/lr``, ``train/grad_norm`` of every
    ``every``-th optimizer step of ``batch`` samples (the global batch), at the step of
    its sample count. Steps are counted from the run's start, so a resumed run logs the
    same steps as one never stopped."""

    def __init__(self, every: int, batch: int) -> None:
        if every < 1 or batch < 1:
            raise ValueError(f"every and batch must be at least 1, got {every} and {batch}")
        self.every = every
        self.batch = batch

    def __call__(self, info: Mapping[str, Any]) -> dict[str, float] | None:
        """The points of this step, or ``None`` when it is not one to log."""
        samples = int(info.get("samples", 0))
        if samples <= 0 or (samples // self.batch) % self.every or "loss" not in info:
            return None
        points = {TRAIN_LOSS: float(info["loss"])}
        for key, name in (("lr", TRAIN_LR), ("grad_norm", TRAIN_GRAD_NORM)):
            if key in info:
                points[name] = float(info[key])
        return points


def run_logger(tracking: dict[str, Any], folder: RunFolder) -> MetricLogger:
    """The metric logger of a run's child (``tracking``: ``{"uri", "run_id"}``), spooling
    in the run folder. A run resumed on another machine (its folder copied, not its MLflow
    store) sends the validations its ``history.json`` holds from before first; the logger
    drops points already there."""
    from pipelines.tracking.logger import MetricLogger

    logger = MetricLogger(tracking["uri"], tracking["run_id"], spool=folder.spool_path)
    for record in folder.read_history():
        logger.log(validation_points(record), int(record["samples"]))
    return logger


def _relative(path: str) -> str:
    """``path`` relative to the working folder where it is inside it (the UI's Source)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except (ValueError, OSError):
        return path
