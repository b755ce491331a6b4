"""The datasets a run reads, found or generated in this process.

A run reads a train, a val and a test dataset of its domain: sharded folders
(:mod:`sparling.shards`) named by their content hash under the config's ``data.root``, by
default ``<work_dir>/data``. :func:`prepare_datasets` finds them, or makes the missing
ones with a generator: by default :func:`generate_dataset_here`, which writes the shards
in this process (or through a process pool); the Ray pipeline passes
its own (one Ray task per shard). Both write the same files, hashes and manifest.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .config import RunConfig
from .shards import ShardInfo, dataset_dir, plan_dataset, read_manifest, write_manifest, write_shard

#: the work dir's folder of datasets (when the config names no ``data.root``)
DATA_DIR = "data"
SPLITS = ("train", "val", "test")

#: what makes one dataset: ``(domain, params, split, seed, count, shards, out, *,
#: progress)`` -> ``out``, the signature of :func:`generate_dataset_here`
Generator = Callable[..., Path]


def data_root(config: RunConfig, work_dir: Path | str) -> Path:
    """The folder holding the run's datasets (absolute)."""
    d = config.data
    return (Path(d.root) if d.root else Path(work_dir) / DATA_DIR).resolve()


def check_domain(config: RunConfig, splits: tuple[str, ...] = SPLITS) -> None:
    """Make the config's domain for each split, as finding its datasets does (a dataset's
    folder is named by the domain's spec): raises what the run would raise before its
    first step, e.g. a ``DomainError`` naming a recordings folder that is missing or holds
    no recordings. Writes nothing; for dry runs and checks before anything starts."""
    from . import domains

    for split in splits:
        domains.make(config.domain.name, split=split, **config.domain.params)


def check_datasets(
    config: RunConfig, work_dir: Path | str, splits: tuple[str, ...] = SPLITS
) -> None:
    """Refuse, before anything is written, dataset folders that the run could neither find
    nor make: a data root (``data.root``, or the work dir) or a dataset path that is a
    file where a folder is expected raises ``NotADirectoryError`` naming the dataset
    folder. Writes nothing, checks no permissions (a dry run may list a read-only
    results folder's runs)."""
    import errno
    import os

    d = config.data
    root = data_root(config, work_dir)
    sizes = {"train": d.train_size, "val": d.val_size, "test": d.test_size}
    for split in splits:
        count = sizes[split]
        shards = max(1, min(d.shards, count))
        folder = dataset_dir(
            root, config.domain.name, dict(config.domain.params), split, d.seed, count, shards
        )
        for part in (folder, *folder.parents):
            if part.is_dir():
                break
            if os.path.lexists(part) and part.exists():  # a file (links to nothing: mkdir says)
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))


def prepare_datasets(
    config: RunConfig,
    work_dir: Path | str,
    *,
    progress: bool = True,
    splits: tuple[str, ...] = SPLITS,
    generate: Generator | None = None,
) -> dict[str, Path]:
    """Find (or generate with ``generate``, by default :func:`generate_dataset_here`) the
    datasets a run reads; returns split -> folder."""
    make = generate or generate_dataset_here
    d = config.data
    root = data_root(config, work_dir)
    sizes = {"train": d.train_size, "val": d.val_size, "test": d.test_size}
    out: dict[str, Path] = {}
    for split in splits:
        count = sizes[split]
        shards = max(1, min(d.shards, count))
        params = dict(config.domain.params)
        folder = dataset_dir(root, config.domain.name, params, split, d.seed, count, shards)
        out[split] = make(
            config.domain.name, params, split, d.seed, count, shards, folder, progress=progress
        )
    return out


def _write_shard(args: tuple[Any, ...]) -> ShardInfo:
    """One shard from a picklable tuple (what a process pool's ``map`` sends)."""
    domain, seed, start, stop, folder, k, n, ds_hash = args
    return write_shard(domain, seed, start, stop, folder, shard=k, num_shards=n, ds_hash=ds_hash)


def generate_dataset_here(
    domain: str,
    params: Mapping[str, Any],
    split: str,
    seed: int,
    count: int,
    shards: int,
    out: Path | str,
    *,
    progress: bool = True,
    mapper: Callable[..., Iterable[ShardInfo]] = map,
) -> Path:
    """Write a dataset into ``out`` unless its manifest there is complete; returns ``out``.

    ``mapper`` writes the shards: the built-in ``map`` here, one after another (with a
    progress bar when ``progress``); a process pool's ``map`` in parallel. The manifest
    follows them: a dataset found without a complete one is written again whole.
    """
    out = Path(out)
    plan = plan_dataset(domain, params, split, seed, count, shards)
    manifest = read_manifest(out) if out.is_dir() else None
    if manifest is None or not manifest.complete:
        out.mkdir(parents=True, exist_ok=True)
        jobs = [
            (plan.domain, plan.seed, a, b, str(out), k, plan.shards, plan.dataset_hash)
            for k, (a, b) in enumerate(plan.ranges)
        ]
        written: Iterable[ShardInfo] = mapper(_write_shard, jobs)
        if progress:
            written = _bar(written, len(jobs), f"generate {plan.folder_name}")
        write_manifest(out, plan.manifest(list(written)))
    return out


def _bar(items: Iterable[ShardInfo], total: int, desc: str) -> Iterator[ShardInfo]:
    """``items`` with a progress bar on a terminal; elsewhere (a log file, a pipe) one line
    per shard on stderr, which a bar's carriage returns would turn into one long line."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, unit="shard")
        return
    start = time.monotonic()
    for done, item in enumerate(items, 1):
        elapsed = time.monotonic() - start
        left = elapsed / done * (total - done)
        print(
            f"{desc}: {done}/{total} shards in {elapsed:.0f} s (about {left:.0f} s left)",
            file=sys.stderr,
            flush=True,
        )
        yield item
