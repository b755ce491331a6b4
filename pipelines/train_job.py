"""One training run as a Ray Train job.

The driver prepares the run's datasets (through the sharded generator), then runs
``TorchTrainer.fit()``; each worker builds the library's :class:`~sparling.train.Trainer`
and turns its validation records into ``ray.train.report`` calls with the run's
checkpoint. The library's loop knows nothing of Ray: this module is the whole bridge.

Where things live (``work_dir`` defaults to ``./sparling-work``)::

    work_dir/data/<domain>-<split>-<hash>/   shared datasets (one per config hash)
    work_dir/runs/<run_id>/                   the run folder (:mod:`sparling.runs`)
    work_dir/ray/<run_id>/                    Ray Train's own storage (reported checkpoints)
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparling.config import RunConfig
from sparling.errors import SparlingError
from sparling.runs import RunFolder

DEFAULT_WORK_DIR = Path("sparling-work")


class RunFailed(SparlingError):
    """A run ended in an error (its last good checkpoint is kept)."""


@dataclass
class RunPaths:
    train: Path
    val: Path
    test: Path
    run_dir: Path


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
def _restore_from_ray(run_dir: Path) -> None:
    """Make the run's last checkpoint at least as new as Ray Train's latest checkpoint.

    On one machine they are the same; on a cluster a retried worker may land on another
    node, where only Ray's persisted copy exists.
    """
    import ray.train

    from sparling.checkpoint import read_meta

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return
    last = RunFolder(run_dir).last
    with ckpt.as_directory() as src:
        theirs = read_meta(Path(src))["samples"]
        try:
            ours = read_meta(last)["samples"]
        except Exception:
            ours = -1
        if theirs > ours:
            tmp = last.with_name(".last.restore")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
            if last.exists():
                shutil.rmtree(last)
            os.replace(tmp, last)


def _numeric(record: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items() if isinstance(v, (int, float))}


class _ProgressFile:
    """Writes ``progress.json`` at most every ``interval`` seconds (for the live displays)."""

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
    from sparling.train import Callbacks, make_trainer

    startup["imports"] = time.time()
    config = RunConfig.model_validate(loop_config["config"])
    run_dir = Path(loop_config["run_dir"])
    folder = RunFolder(run_dir)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(int(config.compute.threads or max(1, config.compute.cpus_per_worker)))
    if rank == 0:
        _restore_from_ray(run_dir)

    train = ShardedDataset(loop_config["train"])
    val = ShardedDataset(loop_config["val"])
    startup["data"] = time.time()
    progress = _ProgressFile(folder)
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

    def on_validation(record: dict[str, Any], checkpoint: Path | None) -> None:
        metrics = _numeric(record)
        if rank == 0:
            progress({**metrics, "state": "running"}, force=True)
        if logger is not None:
            logger.log(mlflow_metrics(record), int(record["samples"]))
        if checkpoint is not None:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint))
        else:
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
    trainer = make_trainer(
        config,
        train,
        val,
        run_dir,
        callbacks=Callbacks(on_validation=on_validation, on_progress=on_progress),
        progress=False,
        rank=rank,
        world_size=world,
        wrap=wrap,
        device=device,
    )
    startup["trainer"] = time.time()
    progress.latest["startup"] = startup
    from pipelines.tracking.system_metrics import system_metrics

    # one process's system metrics per run: rank 0's
    with system_metrics(tracking if rank == 0 else None):
        result = trainer.fit()
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
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )


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
    checkpoint; a run that already finished returns at once with its result.
    """
    from pipelines.ray_env import ensure_ray, refuse_unavailable_gpus
    from sparling.datasets import check_domain
    from sparling.runs import resolve_init_from

    refuse_unavailable_gpus(config.compute.gpus_per_worker, config.compute.workers)
    check_domain(config)  # e.g. a recordings folder, before the run folder is made
    work_dir = Path(work_dir).resolve()
    folder = RunFolder.for_config(config, work_dir)
    run_dir = folder.path
    if config.init_from:
        # A missing source of g is the config's error, not the worker's: refuse it here,
        # before Ray Train would start (and retry) a job that cannot succeed.
        resolve_init_from(config.init_from, run_dir)
    folder.write_config(config)
    datasets = prepare_datasets(config, work_dir, progress=progress)
    paths = RunPaths(datasets["train"], datasets["val"], datasets["test"], run_dir)
    ensure_ray()
    trainer = build_trainer(config, paths, work_dir, max_failures=max_failures, tracking=tracking)

    errors: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # reported below, in the caller's thread
            errors.append(e)

    thread = threading.Thread(target=fit, name=f"fit-{config.run_id()}", daemon=True)
    thread.start()
    _watch(thread, folder, config, progress)
    if errors:
        raise RunFailed(f"run {config.run_id()} failed: {_root_cause(errors[0])}") from errors[0]
    result = folder.read_result()
    if result is None:
        raise RunFailed(f"run {config.run_id()} ended without a result (see {run_dir})")
    return result


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    return f"{type(e).__name__}: {e}"


def _watch(thread: threading.Thread, folder: RunFolder, config: RunConfig, progress: bool) -> None:
    """A progress bar fed by the worker's ``progress.json`` (samples, density, accuracy)."""
    if not progress:
        thread.join()
        return
    from tqdm import tqdm

    bar = tqdm(total=config.budget_samples, unit="sample", desc=f"run {config.run_id()[:8]}")
    acc = float("nan")
    seen: dict[str, Any] = {}
    try:
        while thread.is_alive():
            thread.join(timeout=1.0)
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
        bar.close()
