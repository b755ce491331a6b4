"""One training run as a Ray Train job.

The driver prepares the run's datasets (through the sharded generator), then runs
``TorchTrainer.fit()``; each worker builds the library's :class:`~sparling.train.Trainer`
and turns its validation records into ``ray.train.report`` calls (metrics only). The
library's loop knows nothing of Ray: this module is the whole bridge.

Checkpoints have one owner, the run folder: the trainer writes them there (on the work
dir's shared storage, which every node sees) and resumes from there, also when Ray Train
restarts a worker on another node. Ray Train is given no checkpoint: a copy in its storage
would be a second write of every validation's checkpoint to the same shared storage.

Stopping early (:mod:`sparling.stopping`): SIGTERM or SIGINT to the driver (``sparling
train``) writes the run folder's stop request, which the workers look for between steps;
they also ask for Ray Train's preemption notice (``ray.train.get_preemption_info``: a
node of the run is being drained as preempted, e.g. by the autoscaler for a reclaimed
spot instance, or a ``ray start --block`` node sent SIGTERM, which Ray drains for 30 s).
Either way the workers write the checkpoint at the step they are on.
On a stop request they then end and the driver raises :class:`RunStopped`; on a
preemption notice they wait for Ray Train to restart them elsewhere, where they resume
from that step.

Where things live (``work_dir`` defaults to ``./sparling-work``)::

    work_dir/data/<domain>-<split>-<hash>/   shared datasets (one per config hash)
    work_dir/runs/<run_id>/                   the run folder (:mod:`sparling.runs`)
    work_dir/ray/<run_id>/                    Ray Train's own storage (its run state)
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparling.config import RunConfig
from sparling.errors import SparlingError
from sparling.runs import RunFolder, continue_from_shorter_budget
from sparling.stopping import STOP_GRACE_SECONDS, StopRequest, stop_on_signals, stopped_exit_code

DEFAULT_WORK_DIR = Path("sparling-work")
#: how often a worker looks for the run folder's stop request (seconds; a file on shared
#: storage, so not at every step)
STOP_REQUEST_POLL_SECONDS = 0.25
#: how often a single worker asks Ray Train for a preemption notice (seconds): each ask
#: is a call to Ray Train's synchronisation actor (2.9 ms measured here), too dear for
#: every step; Ray Train itself looks for drained nodes every 5 s
PREEMPTION_POLL_SECONDS = 1.0
#: with several workers the ask is a collective that every rank must make at the same
#: steps: every this many steps
PREEMPTION_POLL_STEPS = 8
#: how long past a preemption deadline a worker that has written its checkpoint waits for
#: Ray Train to restart it, before it fails (and is restarted as a failed worker)
PREEMPTION_WAIT_MARGIN_SECONDS = 60.0
#: Ray Train's own wait when a node is drained without a deadline (its
#: ``DEFAULT_PREEMPTION_DEADLINE_S``)
PREEMPTION_DEFAULT_DEADLINE_SECONDS = 120.0


class RunFailed(SparlingError):
    """A run ended in an error (its last good checkpoint is kept)."""


class RunStopped(Exception):  # noqa: N818 (a stop, not an error)
    """The run was asked to stop (SIGTERM or SIGINT to the driver, or the run folder's
    stop request written by whoever drives it, e.g. a sweep's driver) and its workers
    wrote their checkpoint at the step they were on; the same command resumes it from
    there. ``exit_code``: what the command returns (``128 + signal``); ``reason``: what
    asked (``SIGTERM``); ``samples``: the step of the checkpoint written on the stop,
    ``None`` when the workers did not confirm one in time (the run then resumes from its
    checkpoint before)."""

    def __init__(
        self,
        message: str,
        signum: int | None,
        *,
        reason: str = "a stop request",
        samples: int | None = None,
    ) -> None:
        super().__init__(message)
        self.signum = signum
        self.reason = reason
        self.samples = samples

    @property
    def exit_code(self) -> int:
        return stopped_exit_code(self.signum)


@dataclass
class RunPaths:
    train: Path
    val: Path
    test: Path
    run_dir: Path


def announce_continuation(folder: RunFolder, config: RunConfig, name: str) -> str | None:
    """Start a new run from a shorter-budget run of the same config when the work dir has
    one (:func:`sparling.runs.continue_from_shorter_budget`), and say so; returns its id."""
    continued = continue_from_shorter_budget(folder, config)
    if continued is None:
        return None
    print(continued.message(name, config.budget_samples), flush=True)
    return continued.source.run_id


def prepare_datasets(
    config: RunConfig,
    work_dir: Path = DEFAULT_WORK_DIR,
    *,
    progress: bool = True,
    splits: tuple[str, ...] = ("train", "val", "test"),
    generate: Callable[..., Path] | None = None,
) -> dict[str, Path]:
    """Generate (or find, verified) the datasets a run reads; returns split -> folder.

    ``generate``: what makes one dataset, with the signature of
    :func:`pipelines.generate.generate_dataset` (the default: Ray tasks, one per shard).
    """
    from sparling import datasets

    make = generate
    if make is None:
        from pipelines.generate import generate_dataset

        make = generate_dataset
    return datasets.prepare_datasets(
        config, work_dir, progress=progress, splits=splits, generate=make
    )


# -- the worker side -----------------------------------------------------------------------
class _StopWatch:
    """``Callbacks.should_stop`` of a Ray Train worker (asked before every step): Ray
    Train's preemption notice (every :data:`PREEMPTION_POLL_SECONDS` with one worker;
    with several, every :data:`PREEMPTION_POLL_STEPS` steps on every rank, as the
    collective it is needs), then the run folder's stop request (looked for every
    :data:`STOP_REQUEST_POLL_SECONDS`). The trainer makes the ranks agree on a stop."""

    def __init__(self, folder: RunFolder, world_size: int = 1) -> None:
        self.folder = folder
        self.world_size = world_size
        self._next_look = 0.0
        self._next_ask = 0.0
        self._steps = 0
        self.requested: str | None = None
        #: Ray Train's preemption notice, once one came
        self.preemption: Any = None

    def _ask_ray(self, now: float) -> bool:
        if self.world_size > 1:
            self._steps += 1
            return self._steps % PREEMPTION_POLL_STEPS == 1
        if now < self._next_ask:
            return False
        self._next_ask = now + PREEMPTION_POLL_SECONDS
        return True

    def __call__(self) -> str | None:
        import ray.train

        now = time.monotonic()
        # Ray Train v2's (the default); without it, no notice is asked for
        ask = getattr(ray.train, "get_preemption_info", None)
        if ask is not None and self.preemption is None and self._ask_ray(now):
            self.preemption = ask()
        if self.preemption is not None:
            return "Ray Train's preemption notice"
        if self.requested is None and now >= self._next_look:
            self._next_look = now + STOP_REQUEST_POLL_SECONDS
            self.requested = _read_stop_request(self.folder)
        return self.requested

    def wait_for_restart(self) -> None:
        """After the checkpoint of a preemption notice: wait for Ray Train to tear this
        worker down (it then restarts the run on other nodes, from that checkpoint). Ending
        now would tell Ray Train the run had finished, or failed; a worker still here well
        past the deadline fails, and is restarted as a failed worker is."""
        deadline_ms = getattr(self.preemption, "deadline_ms", None)
        until = (
            deadline_ms / 1000.0
            if deadline_ms
            else time.time() + PREEMPTION_DEFAULT_DEADLINE_SECONDS
        ) + PREEMPTION_WAIT_MARGIN_SECONDS
        while time.time() < until:
            time.sleep(min(1.0, max(0.0, until - time.time())))
        raise RunFailed(
            f"run {self.folder.run_id}: checkpointed on a preemption notice, but Ray Train "
            f"had not restarted it {PREEMPTION_WAIT_MARGIN_SECONDS:.0f} s past the deadline"
        )


def _read_stop_request(folder: RunFolder) -> str | None:
    """The reason in the run folder's stop request, or None when there is none."""
    try:
        request = json.loads(folder.stop_request_path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return "a stop request"  # being written, or unreadable: a request all the same
    return str(request.get("reason", "a stop request")) if isinstance(request, dict) else None


def _numeric(record: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items() if isinstance(v, (int, float))}


class ProgressFile:
    """Writes a run's ``progress.json`` (the latest value of every key it was given) at
    most every ``interval`` seconds, or at once with ``force``: what the live displays
    read, for a Ray Train worker and a local executor's run process alike."""

    def __init__(self, folder: RunFolder, interval: float = 1.0) -> None:
        self.folder = folder
        self.interval = interval
        self._last = 0.0
        # the worker process writing it: what an operator (or a fault test) kills
        self.latest: dict[str, Any] = {"pid": os.getpid()}

    def __call__(self, info: dict[str, Any], force: bool = False) -> None:
        self.latest.update(info)
        now = time.monotonic()
        if force or now - self._last >= self.interval:
            self._last = now
            self.folder.write_progress(self.latest)


def train_worker(loop_config: dict[str, Any]) -> None:
    """``train_loop_per_worker``: runs the library's training loop on one Ray Train worker.

    ``progress.json`` gets a ``startup`` record of wall-clock stamps (``time.time()``) of
    this worker's set-up: ``worker_start`` (entered), ``imports``, ``data`` (datasets
    opened), ``trainer`` (model and optimiser built; the first step follows), beside the
    driver's ``fit_call`` (``TorchTrainer.fit()`` called): where a run's start-up goes.
    """
    startup = {"worker_start": time.time(), **loop_config.get("startup", {})}
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from sparling.shards import ShardedDataset
    from sparling.stopping import TrainingStopped
    from sparling.train import Callbacks, make_trainer

    startup["imports"] = time.time()
    config = RunConfig.model_validate(loop_config["config"])
    run_dir = Path(loop_config["run_dir"])
    folder = RunFolder(run_dir)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(int(config.compute.threads or max(1, config.compute.cpus_per_worker)))

    train = ShardedDataset(loop_config["train"])
    val = ShardedDataset(loop_config["val"])
    startup["data"] = time.time()
    progress = ProgressFile(folder)
    # where rank 0 trains: on a cluster, the node a drain (preemption) would concern
    progress.latest["node_id"] = ray.get_runtime_context().get_node_id()
    tracking = loop_config.get("tracking")
    logger = None
    train_points = None
    if tracking and rank == 0:
        from pipelines.sync import TrainPoints
        from pipelines.tracking.logger import MetricLogger
        from pipelines.tracking.metrics import mlflow_metrics
        from pipelines.tracking.settings import DEFAULT_TRAIN_EVERY_STEPS

        # The spool keeps unsent points on disk, so a crashed worker's retry sends them.
        logger = MetricLogger(tracking["uri"], tracking["run_id"], spool=folder.spool_path)
        every = int(tracking.get("train_every_steps", DEFAULT_TRAIN_EVERY_STEPS))
        train_points = TrainPoints(every, config.batch_size * world)

    def on_validation(record: dict[str, Any], _checkpoint: Path | None) -> None:
        metrics = _numeric(record)
        if rank == 0:
            progress({**metrics, "state": "running"}, force=True)
        if logger is not None:
            logger.log(mlflow_metrics(record), int(record["samples"]))
        # metrics only: the checkpoint is the run folder's (see the module's docstring)
        ray.train.report(metrics)

    def on_progress(info: dict[str, Any]) -> None:
        if rank == 0:
            progress(info)
        if logger is not None and train_points is not None:
            points = train_points(info)
            if points is not None:
                logger.log(points, int(info["samples"]))

    wrap = None
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        def wrap(m: torch.nn.Module) -> torch.nn.Module:
            return DistributedDataParallel(m)

    device = ray.train.torch.get_device() if config.compute.gpus_per_worker > 0 else "cpu"
    watch = _StopWatch(folder, world)
    trainer = make_trainer(
        config,
        train,
        val,
        run_dir,
        callbacks=Callbacks(
            on_validation=on_validation, on_progress=on_progress, should_stop=watch
        ),
        progress=False,
        rank=rank,
        world_size=world,
        wrap=wrap,
        device=device,
    )
    startup["trainer"] = time.time()
    progress.latest["startup"] = startup
    from pipelines.tracking.system_metrics import system_metrics

    try:
        # one process's system metrics per run: rank 0's
        with system_metrics(tracking if rank == 0 else None):
            result = trainer.fit()
    except TrainingStopped as stopped:
        # the checkpoint at this step is written: send what is queued, say where it stands
        if logger is not None:
            logger.close()
        state = "preempted" if watch.preemption is not None else "stopped"
        if rank == 0:
            progress(
                {"samples": stopped.samples, "state": state, "reason": stopped.reason},
                force=True,
            )
        if watch.preemption is not None:
            watch.wait_for_restart()
        return  # the driver finds the run stopped (no result.json) and says so
    if logger is not None:
        logger.close()
    if rank == 0:
        # where rank 0 ran: on a cluster, which node took the run
        where = {
            "node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
        }
        folder.write_result(result, **where)
        progress({"state": "finished", "status": result.status}, force=True)


# -- the driver side -------------------------------------------------------------------------
def build_trainer(
    config: RunConfig,
    paths: RunPaths,
    work_dir: Path,
    max_failures: int = 2,
    tracking: dict[str, Any] | None = None,
) -> Any:
    """The ``TorchTrainer`` for one run (the scaling comes from ``config.compute``)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    c = config.compute
    resources: dict[str, float] = {"CPU": c.cpus_per_worker}
    if c.gpus_per_worker:
        resources["GPU"] = c.gpus_per_worker
    return TorchTrainer(
        train_worker,
        train_loop_config={
            "config": config.model_dump(mode="json"),
            "run_dir": str(paths.run_dir),
            "train": str(paths.train),
            "val": str(paths.val),
            "tracking": tracking,
            "startup": {"fit_call": time.time()},
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=c.workers, use_gpu=c.gpus_per_worker > 0, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=config.run_id(),
            storage_path=str((work_dir / "ray").resolve()),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
        ),
    )


def check_run_can_start(config: RunConfig, work_dir: Path | str) -> None:
    """What a run refuses before it writes anything, for ``sparling train`` (dry run or
    not) and the run itself: a ``RAY_ADDRESS`` where nothing answers, GPUs or CPUs the
    local Ray instance lacks, a domain that cannot be made (e.g. a missing recordings
    folder), dataset folders that could not be made (a file in the way), and an
    ``init_from`` that names no checkpoint. (A missing source of g is the config's error,
    not the worker's: Ray Train would start, and retry, a job that cannot succeed.)"""
    from pipelines.ray_env import check_ray_address, refuse_unavailable_resources
    from sparling.datasets import check_datasets, check_domain
    from sparling.runs import resolve_init_from

    check_ray_address()
    refuse_unavailable_resources(config.compute)
    check_domain(config)
    check_datasets(config, work_dir)
    if config.init_from:
        resolve_init_from(config.init_from, RunFolder.for_config(config, work_dir).path)


def run_training(
    config: RunConfig,
    *,
    work_dir: Path = DEFAULT_WORK_DIR,
    progress: bool = True,
    max_failures: int = 2,
    tracking: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Prepare data, run one Ray Train job, return ``result.json``'s summary.

    Resumable: run it again after an interruption and it continues from the run's last
    checkpoint; a run that already finished returns at once with its result. Called in
    the main thread, SIGTERM and SIGINT during training ask the workers to checkpoint at
    the step they are on and stop; it then raises :class:`RunStopped`. So does a stop
    request that another process writes into the run folder while it trains
    (:func:`write_stop_request`: a sweep's driver asked to stop).
    """
    from pipelines.ray_env import ensure_ray

    check_run_can_start(config, work_dir)  # before the run folder is made
    work_dir = Path(work_dir).resolve()
    folder = RunFolder.for_config(config, work_dir)
    run_dir = folder.path
    folder.write_config(config)
    announce_continuation(folder, config, f"run {config.run_id()}")
    finished = folder.read_result()
    if finished is not None:
        return finished  # finished before, or a shorter-budget run's result, which is this one's
    datasets = prepare_datasets(config, work_dir, progress=progress)
    paths = RunPaths(datasets["train"], datasets["val"], datasets["test"], run_dir)
    ensure_ray()
    trainer = build_trainer(config, paths, work_dir, max_failures=max_failures, tracking=tracking)
    # a request an earlier driver left (killed before it could take it back)
    folder.stop_request_path.unlink(missing_ok=True)

    errors: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # reported below, in the caller's thread
            errors.append(e)

    stop = StopRequest()
    thread = threading.Thread(target=fit, name=f"fit-{config.run_id()}", daemon=True)
    try:
        # after ensure_ray: these handlers stand in for Ray's own while the run trains
        with stop_on_signals(stop):
            thread.start()
            _watch(thread, folder, config, progress, stop)
    finally:
        folder.stop_request_path.unlink(missing_ok=True)
    if errors:
        raise RunFailed(f"run {config.run_id()} failed: {_root_cause(errors[0])}") from errors[0]
    result = folder.read_result()
    info = (folder.read_progress() or {}) if result is None else {}
    # asked here (a signal), or through the run folder's stop request by another driver
    # (a sweep's): either way the workers confirm their checkpoint in progress.json
    if result is None and (stop or info.get("state") == "stopped"):
        reason = str(stop.reason) if stop else str(info.get("reason") or "a stop request")
        samples = int(info["samples"]) if info.get("state") == "stopped" else None
        if samples is not None:
            where = f"wrote its checkpoint at sample {samples}"
        else:
            where = f"did not confirm its checkpoint within {STOP_GRACE_SECONDS:.0f} s"
        raise RunStopped(
            f"run {config.run_id()} stopped on {reason}: it {where}; run the same "
            "command again to resume it",
            stop.signum,
            reason=reason,
            samples=samples,
        )
    if result is None:
        raise RunFailed(f"run {config.run_id()} ended without a result (see {run_dir})")
    return result


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    return f"{type(e).__name__}: {e}"


def _watch(
    thread: threading.Thread,
    folder: RunFolder,
    config: RunConfig,
    progress: bool,
    stop: StopRequest | None = None,
) -> None:
    """Wait for the job's thread, with a progress bar fed by the worker's
    ``progress.json`` (samples, density, accuracy) when ``progress``. Once ``stop`` is set,
    write the run folder's stop request and wait at most :data:`STOP_GRACE_SECONDS` more."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.budget_samples, unit="sample", desc=f"run {config.run_id()[:8]}")
    acc = float("nan")
    seen: dict[str, Any] = {}
    give_up: float | None = None
    try:
        while thread.is_alive():
            if stop is not None and not stop:
                stop.wait(0.2)  # wakes at once when a signal sets it
            else:
                thread.join(timeout=0.2)
            if stop and give_up is None:
                give_up = time.monotonic() + STOP_GRACE_SECONDS
                write_stop_request(folder, str(stop.reason))
                message = f"run {config.run_id()}: {stop.reason}: asking it to checkpoint and stop"
                if bar is not None:
                    bar.write(message)
                else:
                    print(message, flush=True)
            if give_up is not None and time.monotonic() > give_up:
                return
            if bar is None:
                continue
            info = folder.read_progress() or {}
            if "samples" in info and info != seen:
                seen = info
                bar.n = min(int(info["samples"]), config.budget_samples)
                acc = info.get("val_accuracy", acc)
                bar.set_postfix(
                    density=f"{info.get('density', float('nan')):.2e}",
                    loss=f"{info.get('loss', info.get('train_loss', float('nan'))):.3f}",
                    acc=f"{acc:.3f}",
                    refresh=False,
                )
                bar.refresh()
    finally:
        if bar is not None:
            bar.close()


def write_stop_request(folder: RunFolder, reason: str) -> None:
    """Ask the run's workers to checkpoint at the step they are on and stop (``reason``:
    what asked, e.g. ``SIGTERM``); the :func:`run_training` driving them then raises
    :class:`RunStopped`."""
    from sparling.fileio import atomic_write_text

    atomic_write_text(folder.stop_request_path, json.dumps({"reason": reason, "time": time.time()}))
