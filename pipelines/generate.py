"""Generate a sharded dataset with one Ray task per shard (``sparling data generate``).

The on-disk format, manifest and reader live in :mod:`sparling.shards` (no Ray); this
module only plans, schedules and records. In short:

* every argument is validated (and the domain built once) before any Ray work;
* a folder is bound to one dataset hash: a folder holding another dataset is refused,
  never overwritten;
* shards already on disk that match the manifest (size + sha256) are kept, so asking
  again for a complete dataset launches nothing, and an interrupted or damaged one only
  has its missing or bad shards redone;
* tasks write their shard straight into ``out`` (temp name + ``os.replace``), which on a
  multi-node cluster means ``out`` must be on a file system every node sees;
* the manifest is rewritten atomically as shards finish (``complete: false`` until the
  last one), so even a killed run resumes where it stopped; readers accept only complete
  manifests.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from tqdm import tqdm

from pipelines.ray_env import check_ray_address, ensure_ray
from sparling.domains import Domain
from sparling.errors import SparlingError
from sparling.fileio import file_lock
from sparling.shards import (
    MANIFEST_NAME,
    DatasetConflictError,
    DatasetError,
    DatasetPlan,
    Manifest,
    ShardInfo,
    dataset_dir,
    plan_dataset,
    read_manifest,
    remove_stale_temps,
    shard_filename,
    verify_shard,
    write_manifest,
    write_shard,
)

log = logging.getLogger(__name__)

LOCK_NAME = ".generate.lock"


class ShardGenerationError(SparlingError):
    """Some shard tasks failed; ``failures`` maps shard number to the cause.

    Shards that succeeded are on disk and in the (incomplete) manifest; rerunning the
    same command redoes only the failed ones.
    """

    def __init__(self, out: Path, failures: dict[int, str], ranges: list[tuple[int, int]]):
        self.out = out
        self.failures = dict(sorted(failures.items()))
        lines = [
            f"  shard {k} (samples [{ranges[k][0]}, {ranges[k][1]})): {cause}"
            for k, cause in self.failures.items()
        ]
        super().__init__(
            f"{len(failures)} of {len(ranges)} shard(s) of {out} failed; completed shards "
            f"are kept, rerun to retry the rest:\n" + "\n".join(lines)
        )


# ---------------------------------------------------------------------------------------
# The Ray task
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardJob:
    """Everything one shard task needs (small and picklable)."""

    domain_cls: type[Domain]
    params: dict[str, Any]
    split: str
    spec_hash: str
    seed: int
    start: int
    stop: int
    folder: str
    shard: int
    num_shards: int
    dataset_hash: str


def build_shard(job: ShardJob) -> ShardInfo:
    """Body of one shard task: rebuild the domain from (class, params, split), write the shard.

    The domain class travels with the task (by reference for installed modules, by value
    for ones defined in ``__main__``), so domains registered outside the built-in set
    work on workers too. The spec hash check catches a worker whose code differs from the
    driver's (e.g. another sparling version on a cluster node).
    """
    domain = job.domain_cls(split=job.split, **job.params)  # type: ignore[arg-type]
    if domain.spec_hash() != job.spec_hash:
        raise RuntimeError(
            f"domain spec differs on this worker ({domain.spec()}); is the same sparling "
            f"version installed on every node?"
        )
    return write_shard(
        domain,
        job.seed,
        job.start,
        job.stop,
        job.folder,
        shard=job.shard,
        num_shards=job.num_shards,
        ds_hash=job.dataset_hash,
    )


# One CPU per shard; application errors are reported (not retried: sampling is
# deterministic, so a retry would fail the same way), worker crashes are retried by Ray.
_build_shard_task = ray.remote(num_cpus=1, retry_exceptions=False)(build_shard)


def _submit(plan: DatasetPlan, out: Path, k: int) -> ray.ObjectRef:
    """Launch the task for shard ``k`` (a separate function so tests can count launches)."""
    start, stop = plan.ranges[k]
    job = ShardJob(
        domain_cls=type(plan.domain),
        params=plan.params,
        split=plan.domain.split,
        spec_hash=plan.domain.spec_hash(),
        seed=plan.seed,
        start=start,
        stop=stop,
        folder=str(out),
        shard=k,
        num_shards=plan.shards,
        dataset_hash=plan.dataset_hash,
    )
    return _build_shard_task.options(name=f"generate:{plan.folder_name}:shard{k}").remote(job)


# ---------------------------------------------------------------------------------------
# Planning against what is on disk
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _folder_lock(out: Path) -> Iterator[None]:
    """Serialise generators writing the same folder (e.g. parallel sweep trials).

    A second caller waits, then finds the dataset complete and returns without work.
    """
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(file_lock(out / LOCK_NAME))
        except OSError:
            # A read-only folder (e.g. a shared cache) can still be verified; nobody can be
            # writing it through us, and any attempt to write will fail loudly anyway.
            pass
        yield


def _existing_manifest(out: Path, plan: DatasetPlan) -> Manifest | None:
    """The folder's manifest if it is for this dataset; refuse anything else in the way."""
    try:
        manifest = read_manifest(out)
    except DatasetError as e:
        raise DatasetConflictError(
            f"{out} holds an unreadable {MANIFEST_NAME}; refusing to overwrite it "
            f"(remove the folder or choose another --out): {e}"
        ) from None
    if manifest is None:
        # Without a manifest, any file named like one of our shards belongs to someone
        # else (this module writes a manifest before its first shard).
        clash = [shard_filename(k, plan.shards) for k in range(plan.shards)]
        present = [n for n in clash if (out / n).exists()]
        if present:
            raise DatasetConflictError(
                f"{out} has no {MANIFEST_NAME} but already holds {present[0]}"
                f"{' and others' if len(present) > 1 else ''}; refusing to overwrite them"
            )
        return None
    if manifest.dataset_hash != plan.dataset_hash:
        raise DatasetConflictError(
            f"{out} already holds another dataset: its manifest has hash "
            f"{manifest.dataset_hash} ({manifest.domain_name}/{manifest.split}, seed "
            f"{manifest.seed}, count {manifest.count}, {manifest.num_shards} shards), the "
            f"requested dataset has hash {plan.dataset_hash}; refusing to overwrite it "
            f"(use another --out, e.g. dataset_dir())"
        )
    return manifest


def _good_shards(out: Path, manifest: Manifest | None) -> dict[int, ShardInfo]:
    """Shards listed in the manifest whose file still matches (size + sha256)."""
    good: dict[int, ShardInfo] = {}
    if manifest is None:
        return good
    for info in manifest.shards:
        problem = verify_shard(out, info)
        if problem is None:
            good[info.shard] = info
        else:
            log.warning("regenerating shard %d: %s", info.shard, problem)
    return good


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def generate_dataset(
    domain: str,
    params: Mapping[str, Any],
    split: str,
    seed: int,
    count: int,
    shards: int,
    out: Path | str,
    *,
    progress: bool = True,
) -> Path:
    """Generate (or complete, or just verify) a dataset in ``out``; returns ``out``.

    Samples ``[0, count)`` of ``domains.make(domain, split=split, **params)`` at ``seed``
    are split into ``shards`` contiguous ranges, one Ray task each. Raises ValueError for
    bad arguments (before any Ray work), :class:`DatasetConflictError` if ``out`` holds
    another dataset, :class:`ShardGenerationError` if some tasks failed.
    """
    plan = plan_dataset(domain, params, split, seed, count, shards)
    out = Path(out).resolve()  # workers may run with another working directory
    if not (out / MANIFEST_NAME).is_file():
        check_ray_address()  # a new dataset needs Ray: a dead RAY_ADDRESS said before mkdir
    if out.is_dir():
        # Refuse someone else's folder before leaving anything (even a lock file) in it;
        # checked again under the lock below.
        _existing_manifest(out, plan)
    out.mkdir(parents=True, exist_ok=True)

    with _folder_lock(out):
        existing = _existing_manifest(out, plan)
        done = _good_shards(out, existing)
        todo = [k for k in range(plan.shards) if k not in done]
        if not todo:
            if existing is None or not existing.complete:
                write_manifest(out, plan.manifest(list(done.values())))
            log.info("dataset %s is complete and verified; nothing to do", out)
            return out

        remove_stale_temps(out)
        # Record what is known good before launching anything, so an interruption at any
        # point leaves a manifest that resumes correctly (and dropped bad entries stay dropped).
        write_manifest(out, plan.manifest(list(done.values())))
        failures = _run_tasks(plan, out, todo, done, progress)
        write_manifest(out, plan.manifest(list(done.values())))

    if failures:
        raise ShardGenerationError(out, failures, plan.ranges)
    return out


def _run_tasks(
    plan: DatasetPlan, out: Path, todo: list[int], done: dict[int, ShardInfo], progress: bool
) -> dict[int, str]:
    """Run one task per shard in ``todo``, filling ``done``; returns failures by shard."""
    ensure_ray()
    pending = {_submit(plan, out, k): k for k in todo}
    failures: dict[int, str] = {}
    bar = tqdm(
        total=plan.shards,
        initial=len(done),
        desc=f"generate {plan.folder_name}",
        unit="shard",
        disable=not progress,
    )
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                k = pending.pop(ref)
                try:
                    info: ShardInfo = ray.get(ref)
                except Exception as e:  # noqa: BLE001 -- reported per shard below
                    failures[k] = _cause(e)
                    log.error("shard %d failed: %s", k, failures[k])
                    bar.set_postfix(failed=len(failures))
                    continue
                done[k] = info
                # Progress survives a killed driver: the manifest lists every finished shard.
                write_manifest(out, plan.manifest(list(done.values())))
                bar.update(1)
    except BaseException:
        # Interrupted (Ctrl-C) or broken: stop the rest; the caller keeps what finished.
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref)
        write_manifest(out, plan.manifest(list(done.values())))
        raise
    finally:
        bar.close()
    return failures


def _cause(e: BaseException) -> str:
    """The user-facing cause of a task failure (the original exception, not Ray's wrapper)."""
    if isinstance(e, ray.exceptions.RayTaskError):
        inner = e.cause if e.cause is not None else e
        return f"{type(inner).__name__}: {inner}".strip().splitlines()[0]
    return f"{type(e).__name__}: {e}".strip().splitlines()[0]


__all__ = [
    "ShardGenerationError",
    "ShardJob",
    "build_shard",
    "dataset_dir",
    "ensure_ray",
    "generate_dataset",
]
