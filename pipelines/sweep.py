"""Running a sweep: datasets once, one Ray Train job per run in parallel, MLflow for all.

``run_sweep`` is idempotent and resumable, keyed by each run's config hash:

- a run whose ``result.json`` exists and whose MLflow child is finished is skipped;
- an unfinished one resumes from its last checkpoint (the training loop does that);
- MLflow children are found by key, never duplicated; children a killed driver left
  "running" are marked KILLED first, then resumed;
- adding seeds or values to a sweep file runs only the new runs.

Each run is a Ray task (a tiny CPU request) that builds a ``TorchTrainer`` and calls
``fit()``: the Train workers hold the real CPUs, so Ray starts as many runs at once as
the cluster's resources allow and queues the rest. A failed run does not stop the others.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.sweep_spec import PlannedRun, Sweep
from pipelines.tracking.tags import (
    STATUS_FAILED,
    STATUS_FINISHED,
    TAG_FAILURE,
    TAG_STATUS,
    child_tags,
    parent_tags,
)
from pipelines.train_job import prepare_datasets, run_training
from sparling.runs import CHECKPOINTS_DIR, EVALUATION_DIR, RunFolder

#: CPU a run's driver task asks for. Zero: its Train workers ask for the real resources,
#: and any fraction here would be taken from them (8 tasks x 0.01 CPU on a 2-CPU machine
#: leave 1.92 CPUs: room for one 1-CPU worker instead of two).
DRIVER_TASK_CPUS = 0
#: how often a run's job is started again after Ray lost its process or node
SYSTEM_RETRIES = 3


@dataclass
class RunOutcome:
    key: str
    name: str
    status: str  # "finished" | "failed" | "skipped" | "stopped" (local executor's deadline)
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class SweepSummary:
    sweep: str
    outcomes: list[RunOutcome]
    wall_seconds: float
    parent_run_id: str | None = None

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def table(self) -> str:
        width = max((len(o.name) for o in self.outcomes), default=4)
        lines = [f"sweep {self.sweep}: {self.counts()} in {self.wall_seconds:.0f} s"]
        for o in self.outcomes:
            extra = f"  {o.reason}" if o.reason else ""
            lines.append(f"  {o.key}  {o.name:<{width}}  {o.status}{extra}")
        return "\n".join(lines)

    def counts(self) -> str:
        c: dict[str, int] = {}
        for o in self.outcomes:
            c[o.status] = c.get(o.status, 0) + 1
        return ", ".join(f"{n} {s}" for s, n in sorted(c.items()))


def run_is_finished(config: Any, work_dir: Path) -> bool:
    folder = RunFolder.for_config(config, work_dir)
    return bool(folder.read_result()) and folder.evaluation_path.is_file()


# -- the per-run task -------------------------------------------------------------------------
def execute_run(run: PlannedRun, work_dir: Path, tracking: dict[str, Any] | None) -> RunOutcome:
    """Train (or resume), evaluate on the test split, log everything; never raises."""
    tracker: Any = None
    mlflow_run = None
    try:
        if tracking:
            from pipelines.tracking.finder import Tracker

            tracker = Tracker(tracking["uri"])
            mlflow_run = tracking["runs"].get(run.key)
        if tracker is not None and mlflow_run is not None:
            tracker.set_status(mlflow_run, "RUNNING")
        for attempt in range(SYSTEM_RETRIES + 1):
            try:
                run_training(
                    run.config,
                    work_dir=work_dir,
                    progress=False,
                    tracking={"uri": tracking["uri"], "run_id": mlflow_run} if tracking else None,
                )
                break
            except Exception as e:
                # A lost node or actor (not the run's own error): start the job again; it
                # resumes from the run's last checkpoint.
                if attempt == SYSTEM_RETRIES or not is_system_failure(e):
                    raise
                print(
                    f"run {run.key}: {_reason(e)}; restarting from its last checkpoint "
                    f"({attempt + 1}/{SYSTEM_RETRIES})",
                    file=sys.stderr,
                )
        metrics = evaluate_run(run, work_dir)
        if tracker is not None and mlflow_run is not None:
            log_run_results(tracker, mlflow_run, run, work_dir, metrics)
        return RunOutcome(run.key, run.name, "finished", metrics=metrics)
    except Exception as e:  # a failed run must not stop the sweep: report it
        reason = _reason(e)
        if tracker is not None and mlflow_run is not None:
            try:
                tracker.set_tags(mlflow_run, {TAG_STATUS: STATUS_FAILED, TAG_FAILURE: reason})
                tracker.set_terminated(mlflow_run, "FAILED")
            except Exception:  # the tracking server itself may be what failed
                pass
        traceback.print_exc(file=sys.stderr)
        return RunOutcome(run.key, run.name, "failed", reason=reason)


def is_system_failure(e: BaseException) -> bool:
    """Whether ``e`` comes from Ray losing a process or a node (anywhere in its chain), as
    opposed to the run failing by itself (bad config, NaN loss, corrupted data)."""
    import ray.exceptions as rex

    system = (
        rex.RayActorError,
        rex.WorkerCrashedError,
        rex.NodeDiedError,
        rex.ObjectLostError,
        rex.RaySystemError,
        rex.ActorUnavailableError,
    )
    seen: set[int] = set()
    stack: list[BaseException | None] = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, system):
            return True
        stack += [x.__cause__, x.__context__, *getattr(x, "exceptions", ())]
    return False


_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Failed|Interrupt)\b.*")


def _reason(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    text = f"{type(e).__name__}: {e}"
    if "Traceback (most recent call last)" in text:
        # A worker's error as Ray reports it (a traceback snippet): its last error line is
        # what went wrong, e.g. "CheckpointError: <path>: ...".
        lines = [line.strip() for line in text.splitlines()]
        errors = [line for line in lines[1:] if _ERROR_LINE.match(line)]
        if errors:
            text = f"{type(e).__name__}: {errors[-1]}"
    return text if len(text) < 500 else text[:497] + "..."


def evaluate_run(
    run: PlannedRun,
    work_dir: Path,
    *,
    test_dir: Path | None = None,
    device: str = "cpu",
) -> dict[str, float]:
    """Evaluate the run's checkpoint at the reported density (or the lowest reached) on the
    test split (``test_dir``: its dataset folder, already generated; by default prepared
    here), the model on ``device``; writes ``evaluation.json`` and the figures."""
    from sparling import domains
    from sparling.evaluate import evaluate_checkpoint
    from sparling.shards import ShardedDataset

    folder = RunFolder.for_config(run.config, work_dir)
    checkpoint = folder.select_checkpoint()
    if test_dir is None:
        test_dir = prepare_datasets(run.config, work_dir, splits=("test",), progress=False)["test"]
    test = ShardedDataset(test_dir)
    result = evaluate_checkpoint(checkpoint, test, out_dir=folder.evaluation_dir, device=device)
    domain = domains.make(run.config.domain.name, **run.config.domain.params)
    m = result.metrics
    summary = folder.read_result() or {}
    metrics = {
        "test_fpe": m["fpe"],
        "test_fne": m["fne"],
        "test_ce": m["ce"],
        "test_e2ee": m["e2ee"],
        "test_accuracy": m["accuracy"],
        "test_density": m["density"],
        "test_checkpoint_density": m["checkpoint_density"],
        "test_checkpoint_samples": m["checkpoint_samples"],
        "test_reached_reported": float(
            m["checkpoint_density"] <= domain.reported_density * 1.000001
        ),
        "wall_seconds": float(summary.get("wall_seconds", 0.0)),
    }
    folder.write_evaluation(metrics)
    return metrics


def log_run_results(
    tracker: Any, mlflow_run: str, run: PlannedRun, work_dir: Path, metrics: dict[str, float]
) -> None:
    folder = RunFolder.for_config(run.config, work_dir)
    step = int(metrics["test_checkpoint_samples"])
    tracker.log_metrics(mlflow_run, metrics, step)
    tracker.log_artifacts(mlflow_run, folder.evaluation_dir, EVALUATION_DIR)
    tracker.log_artifact(mlflow_run, folder.config_path)
    for ckpt in folder.density_checkpoint_folders():
        tracker.log_artifacts(mlflow_run, ckpt, f"{CHECKPOINTS_DIR}/{ckpt.name}")
    tracker.set_tags(mlflow_run, {TAG_STATUS: STATUS_FINISHED})
    tracker.set_terminated(mlflow_run, "FINISHED")


# -- the driver ----------------------------------------------------------------------------------
EXECUTORS = ("ray", "local")


@dataclass(frozen=True)
class LocalOptions:
    """How the local executor runs (see :mod:`pipelines.local_executor`)."""

    parallel: int = 1
    threads: int = 1
    device: str = "cpu"
    deadline: float | None = None
    seeds_first: bool = False
    """Start every method's first seed before any second seed (the plan's order otherwise)."""


def run_sweep(
    sweep: Sweep,
    work_dir: Path = Path("sparling-work"),
    *,
    progress: bool = True,
    track: bool = True,
    executor: str = "ray",
    local: LocalOptions | None = None,
) -> SweepSummary:
    """Run every run of ``sweep`` that is not finished yet; returns the outcome of each.

    ``executor``: ``ray`` (one Ray Train job per run, on the local instance or the cluster
    ``RAY_ADDRESS`` names) or ``local`` (processes on this machine, no Ray; ``local``
    says how many at once, with how many threads, on which device, until when)."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; accepted: {', '.join(EXECUTORS)}")
    t0 = time.monotonic()
    work_dir = Path(work_dir).resolve()
    todo: list[PlannedRun] = []
    outcomes: dict[str, RunOutcome] = {}
    for run in sweep.runs:
        if run_is_finished(run.config, work_dir):
            outcomes[run.key] = RunOutcome(run.key, run.name, "skipped", "already finished")
        else:
            todo.append(run)

    if executor == "ray":
        # Each distinct dataset once, before any run starts (runs share them by hash).
        # (The local executor generates them itself, with a process pool.)
        seen: set[str] = set()
        for run in todo:
            data_key = json.dumps([run.config.domain.model_dump(), run.config.data.model_dump()])
            if data_key not in seen:
                seen.add(data_key)
                prepare_datasets(run.config, work_dir, progress=progress)

    with contextlib.ExitStack() as stack:
        tracking: dict[str, Any] | None = None
        parent: str | None = None
        if track:
            tracking, parent = stack.enter_context(_tracking_context(sweep, work_dir, todo))
        if todo and executor == "ray":
            from pipelines.ray_env import ensure_ray

            ensure_ray()
            _launch_and_watch(todo, work_dir, tracking, outcomes, progress)
        elif todo:
            _launch_local(todo, work_dir, tracking, outcomes, progress, local or LocalOptions())
    ordered = [outcomes[r.key] for r in sweep.runs]
    return SweepSummary(sweep.name, ordered, time.monotonic() - t0, parent)


@contextlib.contextmanager
def _tracking_context(
    sweep: Sweep, work_dir: Path, todo: list[PlannedRun]
) -> Iterator[tuple[dict[str, Any], str]]:
    """The tracking server (started or reused), the sweep's parent run and each run's child."""
    from pipelines.tracking.finder import Tracker
    from pipelines.tracking.logger import MetricLogger
    from pipelines.tracking.server import tracking_uri
    from pipelines.tracking.settings import load_settings
    from pipelines.tracking.tags import environment_tags

    settings = load_settings(work_dir)
    with tracking_uri(settings) as uri:
        tracker = Tracker(uri)
        experiment = tracker.experiment(
            settings.experiment_for(sweep=sweep.name), settings.experiment_artifact_location
        )
        parent = tracker.parent_run(
            experiment, sweep.name, parent_tags(len(sweep.runs), sweep.swept_fields, sweep.source)
        )
        # Children a killed driver left RUNNING: mark them KILLED; they resume below.
        tracker.mark_stale(parent, keep=set())
        env = environment_tags()
        runs: dict[str, str] = {}
        todo_keys = {r.key for r in todo}
        for run in sweep.runs:
            if run.key in todo_keys:
                continue
            # Finished on disk; if the driver died before MLflow heard of it (the run's
            # last step is logging its results), log them now from the saved evaluation.
            child = tracker.find_child(parent, run.key)
            if child is None or child.info.status != "FINISHED":
                child_id = _child(tracker, experiment, parent, run, env)
                folder = RunFolder.for_config(run.config, work_dir)
                # points its worker had not sent yet are in its spool: send them first
                MetricLogger(uri, child_id, spool=folder.spool_path).close()
                saved = folder.read_evaluation() or {}
                log_run_results(tracker, child_id, run, work_dir, saved)
        for run in todo:
            runs[run.key] = _child(tracker, experiment, parent, run, env)
        tracker.set_status(parent, "RUNNING")
        try:
            yield {"uri": uri, "runs": runs}, parent
        finally:
            tracker.set_terminated(parent, "FINISHED")


def _child(tracker: Any, experiment: str, parent: str, run: PlannedRun, env: dict[str, str]) -> str:
    """Find or create the run's MLflow child under the sweep's parent."""
    config = run.config
    run_id, _ = tracker.child_run(
        experiment,
        parent,
        run.key,
        run.name,
        params=config.flat(),
        tags={**env, **child_tags(run.key, run.method, config.domain.name, run.seed, run.swept)},
    )
    return str(run_id)


def _launch_and_watch(
    todo: list[PlannedRun],
    work_dir: Path,
    tracking: dict[str, Any] | None,
    outcomes: dict[str, RunOutcome],
    progress: bool,
) -> None:
    import ray

    # Retried by Ray if the process running it dies (its node lost): the run resumes.
    remote = ray.remote(num_cpus=DRIVER_TASK_CPUS, max_retries=SYSTEM_RETRIES)(execute_run)
    waiting = list(todo)
    todo_keys = {r.key for r in todo}
    pending: dict[Any, PlannedRun] = {}
    display = _Display(todo, work_dir, progress)

    def give_up(run: PlannedRun, reason: str) -> None:
        """A run that will not start: reported failed, with the reason."""
        waiting.remove(run)
        outcomes[run.key] = RunOutcome(run.key, run.name, "failed", reason)
        display.finished(run, outcomes[run.key])

    def blocked(run: PlannedRun) -> bool:
        """Whether ``run`` waits for another run (a Retrained run for its source of g);
        a run whose source failed fails at once, saying so."""
        if run.after is None or run.after not in todo_keys:
            return False  # no dependency, or it had finished before this sweep started
        source = outcomes.get(run.after)
        if source is None:
            return True
        if source.status == "failed":
            give_up(run, f"run {source.name} ({run.after}), whose g it retrains, failed")
        return False

    def submit() -> None:
        # Only as many runs as the cluster can train at once are started: a run started
        # early would only wait for resources, holding a Train controller and its helper
        # actors (~0.8 GB of memory per run here). Re-read every time, so a cluster that
        # grows (autoscaler) or shrinks (lost node) is followed. Runs waiting for another
        # run are passed over until it has finished.
        total = ray.cluster_resources()
        used = [_needs(r) for r in pending.values()]
        for run in list(waiting):
            if run not in waiting or blocked(run) or run.key in outcomes:
                continue
            need = _needs(run)
            fits = all(
                sum(u.get(k, 0.0) for u in used) + v <= total.get(k, 0.0) + 1e-9
                for k, v in need.items()
            )
            if pending and not fits:
                return
            waiting.remove(run)
            pending[remote.remote(run, work_dir, tracking)] = run
            used.append(need)

    try:
        submit()
        while pending or waiting:
            if not pending:  # only blocked runs left, and nothing running that they wait for
                for run in list(waiting):
                    give_up(run, f"waits for run {run.after}, which is not in this sweep's plan")
                break
            done, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)
            for ref in done:
                run = pending.pop(ref)
                try:
                    outcomes[run.key] = ray.get(ref)
                except Exception as e:  # the task itself died (worker killed, node lost)
                    outcomes[run.key] = RunOutcome(run.key, run.name, "failed", _reason(e))
                display.finished(run, outcomes[run.key])
            submit()
            display.refresh()
    finally:
        display.close()


def _launch_local(
    todo: list[PlannedRun],
    work_dir: Path,
    tracking: dict[str, Any] | None,
    outcomes: dict[str, RunOutcome],
    progress: bool,
    options: LocalOptions,
) -> None:
    """The local executor: runs in processes on this machine; a Retrained run waits for
    its source (started in a later round, once the source has finished)."""
    from pipelines.local_executor import run_local

    waiting = sorted(todo, key=lambda r: r.seed) if options.seeds_first else list(todo)
    todo_keys = {r.key for r in todo}
    while waiting:
        ready = [
            r for r in waiting if r.after is None or r.after not in todo_keys or r.after in outcomes
        ]
        for run in ready:
            waiting.remove(run)
            source = outcomes.get(run.after) if run.after else None
            if source is not None and source.status != "finished":
                outcomes[run.key] = RunOutcome(
                    run.key,
                    run.name,
                    "failed",
                    f"run {source.name} ({run.after}), whose g it retrains, {source.status}",
                )
        ready = [r for r in ready if r.key not in outcomes]
        if not ready:
            for run in waiting:
                outcomes[run.key] = RunOutcome(
                    run.key, run.name, "failed", f"waits for run {run.after}, not in the plan"
                )
            break
        results = run_local(
            ready,
            work_dir,
            tracking,
            parallel=options.parallel,
            threads=options.threads,
            device=options.device,
            deadline=options.deadline,
            progress=progress,
        )
        for run in ready:
            status, reason = results.get(run.key, ("failed", "no outcome"))
            if status == "finished":
                metrics = RunFolder.for_config(run.config, work_dir).read_evaluation() or {}
                outcomes[run.key] = RunOutcome(run.key, run.name, "finished", metrics=metrics)
            else:
                outcomes[run.key] = RunOutcome(run.key, run.name, status, reason)
                if tracking:
                    _mark_ended(tracking, run, status, reason)


def _mark_ended(tracking: dict[str, Any], run: PlannedRun, status: str, reason: str) -> None:
    """A failed run's child FAILED with the reason; a stopped one KILLED (it resumes)."""
    from pipelines.tracking.finder import Tracker

    child = tracking["runs"][run.key]
    try:
        tracker = Tracker(tracking["uri"])
        if status == "failed":
            tracker.set_tags(child, {TAG_STATUS: STATUS_FAILED, TAG_FAILURE: reason})
        tracker.set_terminated(child, "FAILED" if status == "failed" else "KILLED")
    except Exception:  # the tracking server itself may be what failed
        pass


def _needs(run: PlannedRun) -> dict[str, float]:
    """The Ray resources a run's training job holds (all its workers)."""
    c = run.config.compute
    need = {"CPU": c.workers * c.cpus_per_worker}
    if c.gpus_per_worker:
        need["GPU"] = c.workers * c.gpus_per_worker
    return need


class _Display:
    """Live progress: one bar for the sweep (runs done, running, failed) and one per
    running run (its samples, density and last validation accuracy)."""

    def __init__(self, todo: list[PlannedRun], work_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.time()
        self.todo = {r.key: r for r in todo}
        self.work_dir = work_dir
        self.done = 0
        self.failed = 0
        self.bars: dict[str, Any] = {}
        self.overall: Any = None
        if enabled:
            from tqdm import tqdm

            self.overall = tqdm(total=len(todo), unit="run", desc="sweep", position=0)

    def _progress(self, run: PlannedRun) -> dict[str, Any] | None:
        folder = RunFolder.for_config(run.config, self.work_dir)
        try:
            if folder.progress_path.stat().st_mtime < self.started:
                return None  # left by an earlier, interrupted sweep: not running now
        except FileNotFoundError:
            return None
        return folder.read_progress()

    def refresh(self) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        running = 0
        for key, run in self.todo.items():
            info = self._progress(run)
            if not info or "samples" not in info:
                continue
            running += 1
            bar = self.bars.get(key)
            if bar is None:
                bar = self.bars[key] = tqdm(
                    total=run.config.budget_samples,
                    unit="sample",
                    desc=f"  {run.name}"[:40],
                    position=len(self.bars) + 1,
                    leave=False,
                )
            bar.n = min(int(info["samples"]), run.config.budget_samples)
            acc = info.get("val_accuracy")
            bar.set_postfix(
                density=f"{info.get('density', float('nan')):.2e}",
                acc="-" if acc is None else f"{acc:.3f}",
                refresh=False,
            )
            bar.refresh()
        self.overall.set_postfix(running=running, failed=self.failed, refresh=False)
        self.overall.refresh()

    def finished(self, run: PlannedRun, outcome: RunOutcome) -> None:
        self.done += 1
        self.failed += outcome.status == "failed"
        self.todo.pop(run.key, None)
        bar = self.bars.pop(run.key, None)
        if bar is not None:
            bar.close()
        if self.overall is not None:
            self.overall.update(1)
            self.overall.write(f"{outcome.status}: {run.name} {outcome.reason}".rstrip())

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        if self.overall is not None:
            self.overall.close()
