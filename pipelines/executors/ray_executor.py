"""The Ray executor: one Ray Train job per run, on the local Ray or the cluster
``RAY_ADDRESS`` names.

Each distinct dataset is generated once before any run starts (one Ray task per shard).
Each run is then a Ray task (asking for no CPU) that builds a ``TorchTrainer`` and calls
``fit()`` (:func:`pipelines.train_job.run_training`): the Train workers hold the real
CPUs, so only as many runs are started as the cluster's resources allow, the rest wait
(on one machine the first run starts at once, its job waiting for room). On a cluster the
runs that wait are shown to Ray's autoscaler (:class:`ClusterDemand`), so that it adds
the nodes they need instead of one node for the one run started. A run waiting for
another (a Retrained run for its source of g) starts once that one has finished. A
failed run does not stop the others; a run whose job dies of a Ray system error (a lost
process or node) is started again from its last checkpoint.

SIGTERM or SIGINT to the sweep's driver stops the sweep as the local executor's does:
no run is started any more, and each running one gets its run folder's stop request
(:func:`pipelines.train_job.write_stop_request`, on the work dir's shared storage, so
that it reaches a worker on any node): its workers write the checkpoint at the step they
are on and end. A run stopped that way, or whose own driver task was sent SIGTERM (its
node drained), is reported ``stopped``, never ``failed``: its MLflow child ends KILLED,
and the sweep run again resumes it from that checkpoint. A run that has not ended
:data:`~sparling.stopping.STOP_GRACE_SECONDS` (plus :data:`STOP_TEARDOWN_SECONDS`) after
the request is cancelled and keeps its checkpoint from before.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipelines.display import SweepDisplay
from pipelines.executors.base import RunOutcome, evaluate_run
from pipelines.plan import PlannedRun
from pipelines.sync import end_child, log_run_results, mark_ended, run_tracking
from pipelines.train_job import RunStopped, prepare_datasets, run_training, write_stop_request
from sparling.runs import RunFolder
from sparling.stopping import STOP_GRACE_SECONDS, StopRequest, TrainingStopped, stop_on_signals

#: CPU a run's driver task asks for. Zero: its Train workers ask for the real resources,
#: and any fraction here would be taken from them (8 tasks x 0.01 CPU on a 2-CPU machine
#: leave 1.92 CPUs: room for one 1-CPU worker instead of two).
DRIVER_TASK_CPUS = 0
#: how often a run's job is started again after Ray lost its process or node
SYSTEM_RETRIES = 3
#: A shape whose placeholder has run (there was room for it) gets no new placeholder
#: for this many seconds: room that the next run takes needs none, and room that
#: something else takes is asked for again at this pace, not in a tight loop.
PLACEHOLDER_RETRY_S = 5.0
#: How often the driver looks again when nothing runs and the cluster has no room yet.
WAIT_FOR_ROOM_S = 2.0
#: How long the driver waits for a run to end before it looks again (at the cluster's
#: room, the display, a stop request: the signal handler only sets it, so this is how
#: late the runs hear of a stop, at most)
WATCH_S = 0.5
#: What the placeholder tasks are called (in the dashboard and the task list).
PLACEHOLDER_NAME = "sparling: room for a waiting run"
#: Once a stopped run's workers have written their checkpoint (within
#: :data:`~sparling.stopping.STOP_GRACE_SECONDS` of the request), how long its Ray Train
#: job may take to end before the driver cancels it.
STOP_TEARDOWN_SECONDS = 60.0


class RayExecutor:
    """``--executor ray`` (the default)."""

    def prepare(self, todo: Sequence[PlannedRun], work_dir: Path, *, progress: bool) -> None:
        """Each distinct dataset once, before any run starts (runs share them by hash)."""
        seen: set[str] = set()
        for run in todo:
            data_key = json.dumps([run.config.domain.model_dump(), run.config.data.model_dump()])
            if data_key not in seen:
                seen.add(data_key)
                prepare_datasets(run.config, work_dir, progress=progress)

    def execute(
        self,
        todo: list[PlannedRun],
        work_dir: Path,
        tracking: dict[str, Any] | None,
        outcomes: dict[str, RunOutcome],
        *,
        progress: bool,
    ) -> None:
        from pipelines.ray_env import ensure_ray

        ensure_ray()
        _launch_and_watch(todo, work_dir, tracking, outcomes, progress)


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
                    tracking=run_tracking(tracking, run.key) if tracking else None,
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
    except (RunStopped, TrainingStopped) as stopped:
        # asked to stop (the sweep's driver, or SIGTERM to this task): resumable
        reason = stopped_reason(stopped.reason, stopped.samples)
        if tracker is not None and mlflow_run is not None:
            end_child(tracker, mlflow_run, "stopped", reason)
        return RunOutcome(run.key, run.name, "stopped", reason=reason)
    except Exception as e:  # a failed run must not stop the sweep: report it
        reason = _reason(e)
        if tracker is not None and mlflow_run is not None:
            end_child(tracker, mlflow_run, "failed", reason)
        traceback.print_exc(file=sys.stderr)
        return RunOutcome(run.key, run.name, "failed", reason=reason)


def stopped_reason(why: str | None, samples: int | None) -> str:
    """What a stopped run's outcome says: ``stopped on SIGTERM at sample N; resumes from
    there when run again`` (as the local executor says it); without ``samples`` (no
    checkpoint confirmed), that it resumes from its checkpoint before."""
    if samples is None:
        return (
            f"stopped on {why}: no checkpoint confirmed; resumes from its previous one when "
            "run again"
        )
    return f"stopped on {why} at sample {samples}; resumes from there when run again"


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


# -- the autoscaler's view of the sweep ---------------------------------------------------------
def training_bundles(run: PlannedRun) -> list[dict[str, float]]:
    """The Ray resource bundles a run's training job asks for: one per Train worker, the
    shape :func:`pipelines.train_job.build_trainer` gives its ``ScalingConfig``."""
    c = run.config.compute
    bundle = {"CPU": float(c.cpus_per_worker)}
    if c.gpus_per_worker:
        bundle["GPU"] = float(c.gpus_per_worker)
    return [dict(bundle) for _ in range(c.workers)]


#: a bundle as a hashable key: its (resource, amount) pairs, sorted
Shape = tuple[tuple[str, float], ...]


class ClusterDemand:
    """Shows Ray's autoscaler the runs the cluster has no room for: one pending placeholder
    task per training bundle of each run that waits to start, or that lost its room once
    started (its node gone).

    The autoscaler adds nodes only for demand it sees. A started run shows its own: its
    Train workers' placement group, and the bundles its Train controller registers with
    Ray's autoscaling coordinator. A run not started yet (held back so that it does not
    hold a Train controller while it waits) would show nothing, and a sweep of nine 1-GPU
    runs would bring up one node and train one run at a time. A placeholder is a task of
    the bundle's shape that does nothing: while it is pending it is demand (``ray
    status``: "Pending Demands"), for which the autoscaler launches nodes up to the
    cluster's limits; once it has run there is room, the executor starts a run there
    (:func:`_launch_and_watch` follows ``ray.cluster_resources()``), and no placeholder
    is asked for in its place. (A placeholder can also run on room that a run just
    started is about to take, while its Ray Train job starts; the one that replaces it is
    asked for only :data:`PLACEHOLDER_RETRY_S` later, so that costs a trivial task every
    few seconds, not a loop.)

    Why not ``ray.autoscaler.sdk.request_resources``: in Ray 2.60 Ray Train's
    coordinator replaces that request with its own merged one at every Train start and
    end (and every 20 s), and autoscaler v2 (KubeRay's) grants such a request only
    whole: one asking for more than the cluster's ``max_workers`` can hold launches no
    node at all. Pending tasks are best-effort (the autoscaler launches what it may), and
    they are the driver's: if it dies they go with it, leaving nothing asking.

    :meth:`update` is cheap when nothing changed; :meth:`release` cancels every
    placeholder, and is called on every way out of the sweep (success, a failed run, an
    error, Ctrl-C, SIGTERM, which Ray turns into ``SystemExit`` in a driver).
    ``enabled`` only on a cluster (:func:`pipelines.ray_env.on_cluster`): the local Ray
    instance has no autoscaler, and a placeholder there would only take a freed CPU for
    a moment before the next run.
    ``place``, ``cancel`` and ``done`` default to Ray (a placeholder task, ``ray.cancel``,
    ``ray.wait``); tests pass their own.
    """

    def __init__(
        self,
        place: Callable[[dict[str, float]], Any] | None = None,
        cancel: Callable[[Any], None] | None = None,
        done: Callable[[list[Any]], list[Any]] | None = None,
        *,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.enabled = enabled
        self._place = place or _place
        self._cancel = cancel or _cancel
        self._done = done or _done
        self._clock = clock
        self._pending: dict[Shape, list[Any]] = {}
        self._ran_at: dict[Shape, float] = {}
        #: placeholders asked for so far, and the most pending at once
        self.placed = 0
        self.peak = 0

    @property
    def pending(self) -> int:
        """Placeholders pending now (as far as this driver knows)."""
        return sum(len(refs) for refs in self._pending.values())

    def update(self, runs: Sequence[PlannedRun]) -> None:
        """Keep one placeholder pending per training bundle of ``runs`` (the runs the
        cluster has no room for now); cancel those that no such run needs any more."""
        if not self.enabled:
            return
        want: dict[Shape, int] = {}
        for run in runs:
            for bundle in training_bundles(run):
                shape = tuple(sorted(bundle.items()))
                want[shape] = want.get(shape, 0) + 1
        refs = [ref for shape_refs in self._pending.values() for ref in shape_refs]
        finished = {id(ref) for ref in self._done(refs)} if refs else set()
        now = self._clock()
        for shape in set(self._pending) | set(want):
            had = self._pending.get(shape, [])
            alive = [ref for ref in had if id(ref) not in finished]
            if len(alive) < len(had):
                self._ran_at[shape] = now
            while len(alive) > want.get(shape, 0):
                self._cancel(alive.pop())
            missing = want.get(shape, 0) - len(alive)
            recently = now - self._ran_at.get(shape, float("-inf")) < PLACEHOLDER_RETRY_S
            if missing > 0 and not recently:
                alive += [self._place(dict(shape)) for _ in range(missing)]
                self.placed += missing
            if alive:
                self._pending[shape] = alive
            else:
                self._pending.pop(shape, None)
        self.peak = max(self.peak, self.pending)

    def release(self) -> None:
        """Cancel every placeholder still pending."""
        for refs in self._pending.values():
            for ref in refs:
                self._cancel(ref)
        self._pending.clear()


def _place(bundle: dict[str, float]) -> Any:
    extra = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")}
    return (
        _placeholder()
        .options(
            num_cpus=bundle.get("CPU", 0.0),
            num_gpus=bundle.get("GPU", 0.0),
            resources=extra or None,
            name=PLACEHOLDER_NAME,
            max_retries=0,
        )
        .remote()
    )


@functools.cache
def _placeholder() -> Any:
    """The placeholder task (made once). Defined inside a function, so that Ray ships it by
    value and the worker that runs it imports nothing of the project."""
    import ray

    def placeholder() -> None:
        return None

    return ray.remote(placeholder)


def _cancel(ref: Any) -> None:
    import ray

    try:
        ray.cancel(ref)
    except Exception:  # it ran meanwhile, or Ray is going away: nothing left to cancel
        pass


def _done(refs: list[Any]) -> list[Any]:
    import ray

    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
    return list(ready)


# -- the driver ----------------------------------------------------------------------------------
def _launch_and_watch(
    todo: list[PlannedRun],
    work_dir: Path,
    tracking: dict[str, Any] | None,
    outcomes: dict[str, RunOutcome],
    progress: bool,
) -> None:
    import ray

    from pipelines.ray_env import on_cluster

    # Retried by Ray if the process running it dies (its node lost): the run resumes.
    remote = ray.remote(num_cpus=DRIVER_TASK_CPUS, max_retries=SYSTEM_RETRIES)(execute_run)
    waiting = list(todo)
    todo_keys = {r.key for r in todo}
    pending: dict[Any, PlannedRun] = {}
    display = SweepDisplay(todo, work_dir, progress)
    demand = ClusterDemand(enabled=on_cluster())

    def give_up(run: PlannedRun, reason: str, status: str = "failed") -> None:
        """A run that will not start: reported ``status`` (failed, or stopped: it starts
        when the sweep runs again), with the reason."""
        waiting.remove(run)
        outcomes[run.key] = RunOutcome(run.key, run.name, status, reason)
        if tracking:
            mark_ended(tracking, run, status, reason)
        display.finished(run, outcomes[run.key])

    def blocked(run: PlannedRun) -> bool:
        """Whether ``run`` waits for another run (a Retrained run for its source of g);
        a run whose source failed fails at once, one whose source was stopped is stopped
        (not started), each saying so."""
        if run.after is None or run.after not in todo_keys:
            return False  # no dependency, or it had finished before this sweep started
        source = outcomes.get(run.after)
        if source is None:
            return True
        if source.status in ("failed", "stopped"):
            why = f"run {source.name} ({run.after}), whose g it retrains, {source.status}"
            if source.status == "stopped":
                why = f"not started: {why}"
            give_up(run, why, source.status)
        return False

    total: dict[str, float] = {}  # the cluster's resources, as last read
    startable: list[PlannedRun] = []  # waiting runs that could start once there is room

    def submit() -> None:
        # Only as many runs as the cluster can train at once are started: a run started
        # early would only wait for resources, holding a Train controller and its helper
        # actors (~0.8 GB of memory per run here). Re-read every time, so a cluster that
        # grows (autoscaler) or shrinks (lost node) is followed. Runs waiting for another
        # run are passed over until it has finished. On one machine the first run starts
        # even without room (its job then waits for it); on a cluster it waits for room
        # like the others, which its placeholder asks the autoscaler for.
        nonlocal total
        total = ray.cluster_resources()
        used = [_needs(r) for r in pending.values()]
        for run in list(waiting):
            if run not in waiting or blocked(run) or run.key in outcomes:
                continue
            need = _needs(run)
            if (pending or demand.enabled) and not _fits(need, used, total):
                break
            waiting.remove(run)
            pending[remote.remote(run, work_dir, tracking)] = run
            used.append(need)
        # The autoscaler is shown every run the cluster has no room for: those that wait
        # (and could start), and any started without room (a run whose node was lost, or
        # on one machine the first run). A run with room shows its own demand once its
        # Train job starts.
        housed: list[dict[str, float]] = []
        homeless = []
        for run in pending.values():
            if _fits(_needs(run), housed, total):
                housed.append(_needs(run))
            else:
                homeless.append(run)
        startable[:] = [r for r in list(waiting) if not blocked(r) and r.key not in outcomes]
        demand.update(homeless + startable)

    said: list[str] = []

    def say_waiting(run: PlannedRun) -> None:
        """Once: that nothing runs because the cluster has no room yet (it may have no
        worker node at all), and what the first run needs."""
        if said:
            return
        said.append(run.key)
        need = ", ".join(f"{v:g} {k}" for k, v in _needs(run).items())
        have = ", ".join(f"{total.get(k, 0.0):g} {k}" for k in _needs(run))
        display.say(
            f"waiting for room: run {run.name} needs {need}, the cluster has {have} "
            "(nodes come as the cluster's autoscaler adds them for the waiting runs)"
        )

    stop = StopRequest()
    asked: list[RunFolder] = []  # the run folders given a stop request
    stop_by: list[float] = []  # when the runs asked to stop are given up on

    def ask_to_stop() -> None:
        """Once the sweep is asked to stop: the runs not started are stopped (they start
        when the sweep runs again), each running one is asked to checkpoint and stop
        (asked again should its ``run_training`` have started after the request and
        removed it as an earlier driver's), and none is started any more."""
        if not stop_by:
            stop_by.append(time.monotonic() + STOP_GRACE_SECONDS + STOP_TEARDOWN_SECONDS)
            display.say(
                f"stopping on {stop.reason}: {len(pending)} running run(s) write their "
                "checkpoint; no more runs start"
            )
        for run in list(waiting):
            waiting.remove(run)
            why = f"not started: the sweep was asked to stop ({stop.reason})"
            outcomes[run.key] = RunOutcome(run.key, run.name, "stopped", why)
            if tracking:
                mark_ended(tracking, run, "stopped", why)
            display.finished(run, outcomes[run.key])
        for run in pending.values():
            folder = RunFolder.for_config(run.config, work_dir)
            if folder.path.is_dir() and not folder.stop_request_path.exists():
                write_stop_request(folder, str(stop.reason))
                if folder not in asked:
                    asked.append(folder)

    def cancel_stragglers() -> None:
        """The runs still going long after they were asked to stop: cancelled, stopped
        with the checkpoint they had before."""
        for ref, run in list(pending.items()):
            with contextlib.suppress(Exception):  # it ended meanwhile: nothing to cancel
                ray.cancel(ref, force=True)
            why = stopped_reason(stop.reason, None)
            outcomes[run.key] = RunOutcome(run.key, run.name, "stopped", why)
            if tracking:
                mark_ended(tracking, run, "stopped", why)
            display.finished(run, outcomes[run.key])
        pending.clear()

    # after ensure_ray: these handlers stand in for Ray's own (SIGTERM: SystemExit)
    with stop_on_signals(stop):
        try:
            submit()
            while pending or waiting:
                if stop:
                    ask_to_stop()
                    if not pending or time.monotonic() > stop_by[0]:
                        cancel_stragglers()
                        break
                elif not pending and startable:  # on a cluster, nothing has room yet
                    say_waiting(startable[0])
                    stop.wait(WAIT_FOR_ROOM_S)
                    if not stop:
                        submit()
                    display.refresh(started=0, waiting=len(waiting), cluster=total)
                    continue
                elif not pending:  # only blocked runs left, nothing running they wait for
                    for run in list(waiting):
                        give_up(
                            run, f"waits for run {run.after}, which is not in this sweep's plan"
                        )
                    break
                done, _ = ray.wait(list(pending), num_returns=1, timeout=WATCH_S)
                for ref in done:
                    run = pending.pop(ref)
                    try:
                        outcomes[run.key] = ray.get(ref)
                    except Exception as e:  # the task itself died (worker killed, node lost)
                        outcomes[run.key] = RunOutcome(run.key, run.name, "failed", _reason(e))
                    display.finished(run, outcomes[run.key])
                if not stop:
                    submit()
                display.refresh(started=len(pending), waiting=len(waiting), cluster=total)
        finally:
            demand.release()
            display.close()
            for folder in asked:  # the runs have ended: their requests are answered
                folder.stop_request_path.unlink(missing_ok=True)


def _fits(need: dict[str, float], used: list[dict[str, float]], total: dict[str, float]) -> bool:
    """Whether ``need`` fits in ``total`` beside ``used`` (summed over the cluster)."""
    return all(
        sum(u.get(k, 0.0) for u in used) + v <= total.get(k, 0.0) + 1e-9 for k, v in need.items()
    )


def _needs(run: PlannedRun) -> dict[str, float]:
    """The Ray resources a run's training job holds (all its workers)."""
    need: dict[str, float] = {}
    for bundle in training_bundles(run):
        for k, v in bundle.items():
            need[k] = need.get(k, 0.0) + v
    return need
