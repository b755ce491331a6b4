"""The training loop: one run, driven by a :class:`~sparling.config.RunConfig`.

Plain PyTorch: it knows nothing of Ray or MLflow. Orchestrators observe it through
:class:`Callbacks` (``pipelines/`` turns those into ``ray.train.report`` calls and MLflow
logs). The loop is short and calls small named steps.

Determinism: the order of training samples is a pure function of (seed, position in the
sample stream), and the checkpoint holds model, optimiser, schedule, bottleneck and RNG
state, so a run resumed from any checkpoint continues bitwise as if never stopped.

Stopping: the loop checkpoints at each validation, and also at any step where it is asked
to stop (SIGTERM or SIGINT while it trains in the main thread, ``Trainer.stop`` set by
another thread, or ``Callbacks.should_stop``): it writes ``last`` at that step and raises
:class:`~sparling.stopping.TrainingStopped`, so a stopped run loses at most the step in
flight, and resumes from that step exactly.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import domains
from .checkpoint import CheckpointError, load_checkpoint, read_meta, save_checkpoint
from .config import RunConfig
from .devices import resolve_device
from .domains import Domain, Sample
from .errors import TrainingFailed
from .fileio import LockTimeout, file_lock
from .metrics import combine_motif_errors, end_to_end_error
from .models import SparlingModel, sequence_loss
from .runs import (
    RunFolder,
    architecture_overrides,
    build_run_model,
    density_checkpoint_name,
    density_key,
)
from .schedule import AdaptiveSparsitySchedule
from .scoring import SampleSource, batch_motif_errors, collate_inputs
from .seeding import set_seed
from .stopping import STOP_SIGNALS, StopRequest, TrainingStopped, stop_on_signals


@dataclass
class Callbacks:
    """Hooks an orchestrator uses to watch a run. All optional."""

    on_validation: Callable[[dict[str, Any], Path | None], None] | None = None
    """Called after each validation with the metrics record and the checkpoint written."""
    on_progress: Callable[[dict[str, Any]], None] | None = None
    """Called after each training step (cheap) with ``samples`` (trained so far),
    ``density`` (the schedule's), ``loss`` (the step batch's training loss), ``lr`` (the
    learning rate of the step) and ``grad_norm`` (the gradients' global L2 norm, before
    any clipping)."""
    should_stop: Callable[[], str | None] | None = None
    """Asked before each training step: a reason (e.g. ``"preemption notice"``) makes the
    loop write its checkpoint at the current step and raise
    :class:`~sparling.stopping.TrainingStopped`; ``None`` lets it go on. In data-parallel
    training every rank asks at the same steps, and the ranks stop together when any of
    them is asked to."""


@dataclass
class RunResult:
    status: str  # "target-reached" | "budget-exhausted" | "collapsed"
    samples: int
    density: float
    history: list[dict[str, Any]] = field(default_factory=list)
    density_checkpoints: dict[str, str] = field(default_factory=dict)
    run_dir: Path | None = None
    wall_seconds: float = 0.0

    @property
    def val_accuracy(self) -> float:
        """The last validation's exact-match accuracy (NaN before any validation)."""
        return float(self.history[-1]["val_accuracy"]) if self.history else math.nan


@functools.lru_cache(maxsize=4)
def epoch_order(seed: int, epoch: int, blocks: tuple[tuple[int, int], ...]) -> np.ndarray:
    """The order of one epoch: the blocks (shards) in a seeded random order, each block's
    indices in a seeded random order. Visiting a shard as a whole keeps a sharded
    dataset's small decode cache useful; the shards hold i.i.d. samples, so mixing within
    a shard loses nothing."""
    rng = np.random.default_rng([seed, epoch, 0x5EED])
    if len(blocks) == 1:
        start, stop = blocks[0]
        return start + rng.permutation(stop - start)
    order = rng.permutation(len(blocks))
    return np.concatenate(
        [blocks[b][0] + rng.permutation(blocks[b][1] - blocks[b][0]) for b in order]
    )


def batch_positions(
    seed: int, n: int, start: int, size: int, blocks: Sequence[tuple[int, int]] | None = None
) -> np.ndarray:
    """Dataset indices for stream positions ``[start, start + size)``.

    Each epoch is a permutation of ``range(n)`` seeded by (seed, epoch) (see
    :func:`epoch_order`), so the index at any position is known without replaying the
    stream: that is what makes resumption exact.
    """
    key = tuple(blocks) if blocks else ((0, n),)
    out = np.empty(size, dtype=np.int64)
    pos = start
    filled = 0
    while filled < size:
        epoch, offset = divmod(pos, n)
        perm = epoch_order(seed, epoch, key)
        take = min(size - filled, n - offset)
        out[filled : filled + take] = perm[offset : offset + take]
        filled += take
        pos += take
    return out


class Trainer:
    """Trains one run in the run folder ``run_dir`` (:class:`~sparling.runs.RunFolder`);
    ``fit()`` resumes from its last checkpoint when there is one.

    ``model`` is a :class:`~sparling.models.SparlingModel` (``wrapped`` may be its DDP
    wrapper); its ``bottleneck`` is a :class:`sparling.bottlenecks.Bottleneck`.
    """

    def __init__(
        self,
        config: RunConfig,
        model: SparlingModel,
        train: SampleSource,
        val: SampleSource,
        run_dir: Path,
        *,
        target_density: float,
        callbacks: Callbacks | None = None,
        progress: bool = True,
        rank: int = 0,
        world_size: int = 1,
        wrapped: torch.nn.Module | None = None,
        domain: Domain | None = None,
        stop_signals: Sequence[int] = STOP_SIGNALS,
    ) -> None:
        self.config = config
        #: for motif errors at density steps (the symbols and the CE assignment)
        self.domain = domain
        self.model = model
        #: where the model lives (the caller moves it; inputs follow it)
        self.device = next(model.parameters()).device
        # ``wrapped`` is what the forward pass goes through (e.g. DistributedDataParallel).
        self.wrapped = wrapped if wrapped is not None else model
        self.train_data = train
        self.val_data = val
        self.run_dir = Path(run_dir)
        self.folder = RunFolder(self.run_dir)
        self.callbacks = callbacks or Callbacks()
        self.progress = progress and rank == 0
        self.rank = rank
        self.world_size = world_size
        s = config.schedule
        self.schedule = AdaptiveSparsitySchedule(
            initial_density=s.initial_density,
            delta_update=s.delta_update,
            threshold_decay=s.threshold_decay,
            initial_threshold=s.initial_threshold,
            min_threshold=s.min_threshold,
            max_threshold=s.max_threshold,
            target_density=s.target_density or target_density,
        )
        self.optimizer = self._make_optimizer()
        #: the training set's shards, visited one at a time (see ``epoch_order``)
        self._blocks = getattr(train, "blocks", None)
        self.samples = 0
        #: training wall time over every session of this run (resumes included)
        self.elapsed = 0.0
        self._session_start = time.monotonic()
        self.history: list[dict[str, Any]] = []
        self.density_checkpoints: dict[str, str] = {}
        #: the last optimizer step's learning rate and gradient norm (``on_progress``)
        self.last_step: dict[str, float] = {}
        #: set it (from a signal handler, another thread) to stop at the next step with a
        #: checkpoint there; ``fit`` makes ``stop_signals`` set it while it trains
        self.stop = StopRequest()
        self.stop_signals = tuple(stop_signals)
        #: the sample count of the run's ``last`` checkpoint (None before there is one)
        self._last_saved: int | None = None
        self._apply_density(self.schedule.density)

    # -- set-up ---------------------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        o = self.config.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        if o.name == "adam":
            return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)

    @property
    def bottleneck(self) -> Any:
        return self.model.bottleneck

    @property
    def scheduled(self) -> bool:
        """Whether AST drives this run's bottleneck."""
        return self.config.schedule.enabled and bool(getattr(self.bottleneck, "adaptive", False))

    def _apply_density(self, density: float) -> None:
        if self.scheduled:
            self.bottleneck.set_density(density)

    def _lr_at(self, samples: int) -> float:
        o = self.config.optim
        if o.warmup_samples <= 0:
            return o.lr
        return o.lr * min(1.0, (samples + self.config.batch_size) / o.warmup_samples)

    # -- state ------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "samples": self.samples,
            "elapsed": self.wall_seconds(),
            "torch_rng": torch.get_rng_state(),
            **(
                {"cuda_rng": torch.cuda.get_rng_state(self.device)}
                if self.device.type == "cuda"
                else {}
            ),
            "history": [
                {k: v for k, v in r.items() if isinstance(v, (int, float, str))}
                for r in self.history
            ],
            "density_checkpoints": dict(self.density_checkpoints),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.samples = int(state["samples"])
        self.elapsed = float(state.get("elapsed", 0.0))
        self._session_start = time.monotonic()
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.history = list(state["history"])
        self.density_checkpoints = dict(state["density_checkpoints"])
        self._apply_density(self.schedule.density)

    def save(self, name: str, density: float | None = None) -> Path | None:
        """Write checkpoint ``name``; ``density``: the density its model was trained and
        validated at (default: the schedule's current one)."""
        if self.rank != 0:  # data-parallel replicas hold the same state: one writer
            return None
        meta = {
            "run_id": self.config.run_id(),
            "samples": self.samples,
            "density": self.schedule.density if density is None else density,
            "name": name,
            # g and h field by field: the checkpoint builds its own model even after the
            # preset its config names is redefined
            "architecture": architecture_overrides(self.config),
        }
        folder = self.folder.checkpoint(name)
        try:
            written = save_checkpoint(folder, self.state(), meta, self.config.to_json())
            if name == "last":
                self._last_saved = self.samples
            return written
        except OSError as e:
            # Disk full, quota, read-only or missing folder: say where, and that what was
            # written before is intact (checkpoints are replaced atomically).
            kept = (
                f"the last complete checkpoint ({self.folder.last}) is intact"
                if self.folder.has_checkpoint()
                else "no earlier checkpoint exists"
            )
            raise TrainingFailed(
                f"cannot write checkpoint {folder} at sample {self.samples}: "
                f"{e.strerror or e}; {kept}. Free space (or fix the folder) and run again "
                "to resume from it."
            ) from e

    def try_resume(self) -> bool:
        if not self.folder.has_checkpoint():
            return False
        last = self.folder.last
        meta = read_meta(last)
        if meta.get("run_id") != self.config.run_id():
            raise CheckpointError(
                f"{last} belongs to run {meta.get('run_id')}, not {self.config.run_id()}"
            )
        state, _ = load_checkpoint(last)
        self.load_state(state)
        self._last_saved = self.samples
        return True

    # -- steps ----------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bfloat16 autocast when the config asks for it, else nothing."""
        if self.config.compute.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _train_step(self, samples: Sequence[Sample]) -> float:
        """One optimizer step; returns the batch's loss (and keeps the step's learning
        rate and gradient norm in ``last_step``)."""
        self.wrapped.train()
        lr = self._lr_at(self.samples)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x = collate_inputs(samples)
        ids = self.model.token_ids([s.tokens for s in samples])
        # The forward goes through ``wrapped`` (DDP syncs gradients in its hooks).
        with self.autocast():
            logits = self.wrapped(x, ids)
        loss = sequence_loss(logits.float(), ids[:, 1:])
        penalty = self.bottleneck.penalty()
        total = loss + penalty
        if not torch.isfinite(total):
            raise TrainingFailed(
                f"non-finite loss at sample {self.samples} (loss={loss.item()}, "
                f"penalty={float(penalty)}); last good checkpoint kept in "
                f"{self.folder.last}"
            )
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.config.optim.grad_clip is not None:
            # the norm before clipping
            norm = torch.nn.utils.clip_grad_norm_(
                self.model.parameters(), self.config.optim.grad_clip
            )
        else:
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            norm = (
                torch.nn.utils.get_total_norm(grads)
                if grads
                else torch.zeros((), device=loss.device)
            )
        self.optimizer.step()
        # one device-to-host copy for both numbers
        loss_value, norm_value = torch.stack([loss.detach(), norm.detach().to(loss)]).tolist()
        self.last_step = {"lr": lr, "grad_norm": norm_value}
        return float(loss_value)

    def recalibrate_batch_norm(self) -> None:
        """g's batch-norm statistics re-estimated over the first
        ``bn_recalibration_samples`` training samples (a no-op at 0), in batches of the
        run's batch size, every rank alike."""
        count = min(self.config.bn_recalibration_samples, len(self.train_data))
        if count == 0:
            return
        bs = self.config.batch_size
        self.model.recalibrate_batch_norm(
            collate_inputs([self.train_data[i] for i in range(start, min(start + bs, count))])
            for start in range(0, count, bs)
        )

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Exact-match accuracy of greedy decoding on the validation set, plus density."""
        self.model.eval()
        bs = max(self.config.batch_size, 64)
        predicted: list[list[str]] = []
        truth: list[list[str]] = []
        nonzero = 0.0
        for start in range(0, len(self.val_data), bs):
            batch = [self.val_data[i] for i in range(start, min(start + bs, len(self.val_data)))]
            with self.autocast():
                predicted += self.model.decode(collate_inputs(batch), self.config.max_output_len)
            nonzero += float(self.bottleneck.measured_density) * len(batch)
            truth += [list(s.tokens) for s in batch]
        n = len(self.val_data)
        return {
            "val_accuracy": sum(p == t for p, t in zip(predicted, truth)) / n,
            "val_e2ee": end_to_end_error(predicted, truth),
            "val_density": nonzero / n,
        }

    @torch.no_grad()
    def motif_scores(self, samples: int = 200) -> dict[str, float]:
        """FPE/FNE/CE of the current activations on (up to) ``samples`` validation inputs."""
        if self.domain is None:
            return {}
        self.model.eval()
        n = min(samples, len(self.val_data))
        parts = [
            batch_motif_errors(
                self.model,
                self.domain,
                [self.val_data[i] for i in range(start, min(start + 64, n))],
            )[0]
            for start in range(0, n, 64)
        ]
        errors = combine_motif_errors(parts)
        return {"val_fpe": errors.fpe, "val_fne": errors.fne, "val_ce": errors.ce}

    def wall_seconds(self) -> float:
        return self.elapsed + (time.monotonic() - self._session_start)

    def _validate_and_schedule(self, train_loss: float) -> None:
        record: dict[str, Any] = {
            "samples": self.samples,
            "density": self.schedule.density,
            "train_loss": train_loss,
            "wall_seconds": self.wall_seconds(),
        }
        self.recalibrate_batch_norm()
        record.update(self.validate())
        before = self.schedule.density
        after = self.schedule.observe(self.samples, record["val_accuracy"])
        record["threshold"] = self.schedule.threshold
        stepped = after < before and self.scheduled
        if stepped:
            # The model as it is now reached the accuracy bar at density ``before``:
            # keep it as that density's checkpoint, so any density can be evaluated later.
            name = density_checkpoint_name(before)
            self.density_checkpoints[density_key(before)] = name
            record["density_checkpoint"] = name
            record.update(self.motif_scores())
            # labelled with the density it reached the bar at, not the next one
            self.save(name, density=before)
        self._apply_density(after)
        record["next_density"] = after
        self.history.append(record)
        ckpt = self.save("last")
        if self.callbacks.on_validation is not None:
            self.callbacks.on_validation(record, ckpt)

    def _collapsed(self) -> bool:
        """The bottleneck's output was zero on every validation input at the last
        ``collapse_validations`` validations, and such an output stays zero."""
        k = self.config.collapse_validations
        if not k or not getattr(self.bottleneck, "zero_output_is_final", False):
            return False
        last = self.history[-k:]
        return len(last) == k and all(r.get("val_density") == 0 for r in last)

    def _done(self) -> str | None:
        if self.scheduled and self.schedule.done:
            return "target-reached"
        if self._collapsed():
            return "collapsed"
        if self.samples >= self.config.budget_samples:
            return "budget-exhausted"
        return None

    # -- the loop ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _exclusive(self, wait_seconds: float = 120.0) -> Iterator[None]:
        """Hold the run folder's lock while training: a second trainer of the same run (an
        orphan of a killed driver, a duplicate launch) waits for the first to end, then
        resumes from its checkpoint, instead of both writing the same checkpoints."""
        if self.rank != 0:
            yield
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(
                    file_lock(self.folder.lock_path, timeout=wait_seconds, poll_interval=1.0)
                )
            except LockTimeout:
                raise TrainingFailed(
                    f"run {self.config.run_id()} is being trained by another process "
                    f"(lock {self.folder.lock_path} held for {wait_seconds:.0f} s)"
                ) from None
            yield

    def _stop_reason(self) -> str | None:
        """Why the loop should stop now, or None: the stop request, else ``should_stop``.
        With several ranks they agree (any rank asked: all stop), at the same steps."""
        # ``should_stop`` is asked at every step whatever the request says: it may be a
        # collective that every rank must enter the same number of times
        asked = self.callbacks.should_stop() if self.callbacks.should_stop is not None else None
        reason = self.stop.reason or asked
        if self.world_size > 1 and torch.distributed.is_initialized():
            dist = torch.distributed
            flag = torch.tensor([0.0 if reason is None else 1.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() > 0:
                # every rank stops; they take the reason of the lowest rank that was asked
                # (ranks read a request at slightly different times), so that the run
                # reports the request, not "another rank"
                first = torch.tensor(
                    [float(self.rank if reason is not None else self.world_size)],
                    device=self.device,
                )
                dist.all_reduce(first, op=dist.ReduceOp.MIN)
                shared = [reason]
                dist.broadcast_object_list(shared, src=int(first.item()))
                reason = shared[0] or "another rank was asked to stop"
        return reason

    def _stop_here(self, reason: str, bar: Any) -> None:
        """Write ``last`` at the current step (unless it is there already) and raise
        :class:`TrainingStopped`."""
        if bar is not None:
            bar.write(
                f"run {self.config.run_id()}: {reason} at sample {self.samples}; "
                "writing its checkpoint"
            )
        checkpoint = self.folder.last if self.rank == 0 else None
        if self._last_saved != self.samples:
            checkpoint = self.save("last")
        raise TrainingStopped(
            self.config.run_id(), self.samples, reason, checkpoint, signum=self.stop.signum
        )

    def fit(self) -> RunResult:
        """Train to the end of the budget (or the target density), resuming from the last
        checkpoint; raises :class:`~sparling.stopping.TrainingStopped` when asked to stop
        (see the module's docstring)."""
        with self._exclusive(), stop_on_signals(self.stop, self.stop_signals):
            return self._fit()

    def _fit(self) -> RunResult:
        self.try_resume()
        cfg = self.config
        global_batch = cfg.batch_size * self.world_size
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(
                total=cfg.budget_samples,
                initial=self.samples,
                unit="sample",
                dynamic_ncols=True,
                desc=f"run {cfg.run_id()[:8]}",
            )
        next_val = (self.samples // cfg.val_interval + 1) * cfg.val_interval
        loss = math.nan
        try:
            while (status := self._done()) is None:
                reason = self._stop_reason()
                if reason is not None:
                    self._stop_here(reason, bar)
                idx = batch_positions(
                    cfg.seed, len(self.train_data), self.samples, global_batch, self._blocks
                )
                mine = idx[self.rank * cfg.batch_size : (self.rank + 1) * cfg.batch_size]
                loss = self._train_step([self.train_data[int(i)] for i in mine])
                self.samples += global_batch
                if bar is not None:
                    bar.update(global_batch)
                    last = self.history[-1] if self.history else {}
                    last_acc = last.get("val_accuracy", float("nan"))
                    # a bottleneck AST does not drive: the density measured at validation
                    shown = (
                        self.schedule.density
                        if self.scheduled
                        else last.get("val_density", float("nan"))
                    )
                    bar.set_postfix(
                        density=f"{shown:.2e}",
                        loss=f"{loss:.3f}",
                        acc=f"{last_acc:.3f}",
                        refresh=False,
                    )
                if self.callbacks.on_progress is not None:
                    self.callbacks.on_progress(
                        {
                            "samples": self.samples,
                            "density": self.schedule.density,
                            "adaptive": self.scheduled,
                            "loss": loss,
                            **self.last_step,
                        }
                    )
                if self.samples >= next_val or self.samples >= cfg.budget_samples:
                    self._validate_and_schedule(loss)
                    next_val = (self.samples // cfg.val_interval + 1) * cfg.val_interval
        finally:
            if bar is not None:
                bar.close()
        return RunResult(
            wall_seconds=self.wall_seconds(),
            status=status,
            samples=self.samples,
            density=self.schedule.density,
            history=self.history,
            density_checkpoints=self.density_checkpoints,
            run_dir=self.run_dir,
        )


def make_trainer(
    config: RunConfig,
    train: SampleSource,
    val: SampleSource,
    run_dir: Path,
    *,
    callbacks: Callbacks | None = None,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
    wrap: Callable[[SparlingModel], torch.nn.Module] | None = None,
    device: torch.device | str | None = None,
    stop_signals: Sequence[int] = STOP_SIGNALS,
) -> Trainer:
    """Everything a run needs, built from its config (seeded first, so init is reproducible).

    ``device``: where to train; by default ``cuda`` when ``compute.gpus_per_worker > 0``
    (an error if no GPU is visible), else the CPU. ``stop_signals``: the signals that make
    ``fit`` checkpoint and stop (``()``: none; they are only caught in the main thread).
    """
    if device is None:
        device = config.compute.device_type
        what = "compute.gpus_per_worker > 0 asks for device"
    else:
        what = "device"
    device = resolve_device(device, what=what)
    set_seed(config.seed)
    domain = domains.make(config.domain.name, **config.domain.params)
    model = build_run_model(config, domain, run_dir).to(device)
    return Trainer(
        config,
        model,
        train,
        val,
        run_dir,
        target_density=domain.target_density,
        callbacks=callbacks,
        progress=progress,
        rank=rank,
        world_size=world_size,
        wrapped=wrap(model) if wrap is not None else None,
        domain=domain,
        stop_signals=stop_signals,
    )
