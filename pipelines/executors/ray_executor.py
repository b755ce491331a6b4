"""The Ray executor: one Ray Train job per run, on the local Ray or the cluster
``RAY_ADDRESS`` names.

Each distinct dataset is generated once before any run starts (one Ray task per shard).
Each run is then a Ray task (a tiny CPU request) that builds a ``TorchTrainer`` and calls
``fit()`` (:func:`pipelines.train_job.run_training`): the Train workers hold the real
CPUs, so only as many runs are started as the cluster's resources allow, the rest wait.
A run waiting for another (a Retrained run for its source of g) starts once that one has
finished. A failed run does not stop the others; a run whose job dies of a Ray system
error (a lost process or node) is started again from its last checkpoint.
"""

from __future__ import annotations

import json
import re
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.display import SweepDisplay
from pipelines.executors.base import RunOutcome, evaluate_run
from pipelines.plan import PlannedRun
from pipelines.sync import end_child, log_run_results, run_tracking
from pipelines.train_job import prepare_datasets, run_training

#: CPU a run's driver task asks for. Zero: its Train workers ask for the real resources,
#: and any fraction here would be taken from them (8 tasks x 0.01 CPU on a 2-CPU machine
#: leave 1.92 CPUs: room for one 1-CPU worker instead of two).
DRIVER_TASK_CPUS = 0
#: how often a run's job is started again after Ray lost its process or node
SYSTEM_RETRIES = 3


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
    except Exception as e:  # a failed run must not stop the sweep: report it
        reason = _reason(e)
        if tracker is not None and mlflow_run is not None:
            end_child(tracker, mlflow_run, "failed", reason)
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


# -- the driver ----------------------------------------------------------------------------------
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
    display = SweepDisplay(todo, work_dir, progress)

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


def _needs(run: PlannedRun) -> dict[str, float]:
    """The Ray resources a run's training job holds (all its workers)."""
    c = run.config.compute
    need = {"CPU": c.workers * c.cpus_per_worker}
    if c.gpus_per_worker:
        need["GPU"] = c.workers * c.gpus_per_worker
    return need
