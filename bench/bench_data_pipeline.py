"""Input pipeline: reading shards into training batches, and how long training waits on it.

    .venv/bin/python bench/bench_data_pipeline.py [--count N] [--shards K] [--batch B]
        [--seconds S] [--train-samples N] [--threads T] [--out FILE]

Part 1, read throughput (samples/s into a training batch tensor) from a DigitCircle
training set of ``--count`` samples in ``--shards`` Parquet shards (default: the size
and sharding of ``pipelines/configs/digit-circle-fast.yaml``; generated once, without
Ray, under ``sparling-work/bench/data/`` and reused):

* ``open``: ``ShardedDataset(path)`` (manifest + sha256 of every shard);
* ``in order`` / ``shuffled``: ``iter_batches(batch, shuffle=...)`` over a fresh reader
  (shards decoded on first use) plus the conversion to a torch tensor;
* ``trainer order``: what ``Trainer.fit`` does: random access ``dataset[i]`` for the
  indices ``batch_positions`` gives (each epoch: the shards in a seeded order, a seeded
  order inside each, ``sparling.train.epoch_order``) plus ``collate_inputs``, with the
  reader's default cache of 2 decoded shards and with every shard cached.
  ``shard_loads`` counts Parquet reads.

Part 2, a short real training run (fast preset, ``Trainer.fit`` on the same dataset,
``--train-samples`` samples, one validation at the end) with the loop's pieces timed
in place: the training-set ``__getitem__`` calls (the input fetch the loop blocks on),
``collate_inputs``, the training step without its collate, and validation plus
checkpointing. Reported as fractions of ``fit()``'s wall time; ``blocked_on_input``
is fetch + collate. Results go to ``bench/results/data_pipeline.json``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib
from benchlib import REPO, RESULTS, WORK


def counting_dataset(path: Path, cache_shards: int = 2) -> Any:
    """A ShardedDataset that counts and times its shard reads (cache misses)."""
    from sparling.shards import ShardedDataset

    class Counting(ShardedDataset):
        shard_loads = 0
        shard_load_s = 0.0

        def _shard(self, k: int) -> Any:
            if k in self._cache:
                return super()._shard(k)
            t0 = time.perf_counter()
            out = super()._shard(k)
            self.shard_load_s += time.perf_counter() - t0
            self.shard_loads += 1
            return out

    return Counting(path, verify=False, cache_shards=cache_shards)


def read_rows(path: Path, args: Any) -> list[dict[str, Any]]:
    import numpy as np
    import torch

    from sparling.scoring import collate_inputs
    from sparling.shards import ShardedDataset
    from sparling.train import batch_positions

    rows: list[dict[str, Any]] = []
    t = benchlib.time_reps(
        lambda: ShardedDataset(path), seconds=0.0, min_reps=3, max_reps=3, warmup=0
    )
    rows.append({"read": "open (manifest + sha256)", "timing": t, "samples": None})

    def stream(shuffle: bool) -> dict[str, Any]:
        ds = counting_dataset(path)
        n = 0
        for batch in ds.iter_batches(args.batch, shuffle=shuffle, seed=0, epoch=0):
            x = batch.x.astype(np.uint8) if batch.x.dtype == np.bool_ else batch.x
            torch.from_numpy(x)
            n += len(batch)
            if n >= args.max_samples:
                break
        return {"samples": n, "shard_loads": ds.shard_loads, "shard_load_s": ds.shard_load_s}

    for label, shuffle in (("in order", False), ("shuffled", True)):
        info: dict[str, Any] = {}

        def one_pass(shuffle: bool = shuffle, info: dict[str, Any] = info) -> None:
            info.update(stream(shuffle))

        t = benchlib.time_reps(one_pass, seconds=args.seconds, min_reps=2, warmup=0)
        rows.append({"read": f"{label}: iter_batches + tensor", "timing": t, **info})

    count = len(ShardedDataset(path, verify=False))
    for label, cache in (("cache 2 shards (default)", 2), ("cache every shard", args.shards)):
        ds = counting_dataset(path, cache_shards=cache)
        pos = {"samples": 0}

        def trainer_batch(ds: Any = ds, pos: dict[str, int] = pos) -> None:
            idx = batch_positions(0, count, pos["samples"], args.batch, ds.blocks)
            collate_inputs([ds[int(i)] for i in idx])
            pos["samples"] += args.batch

        t = benchlib.time_reps(
            trainer_batch, seconds=args.seconds, min_reps=3, max_reps=1000, warmup=0
        )
        rows.append(
            {
                "read": f"trainer order, {label}: dataset[i] + collate_inputs",
                "timing": t,
                "samples": pos["samples"],
                "shard_loads": ds.shard_loads,
                "shard_load_s": ds.shard_load_s,
                "per_batch": True,
            }
        )
    for r in rows:
        t = r["timing"]
        if r.get("per_batch"):  # batches differ a lot (shard read or not): total / total
            r["samples_per_s"] = round(r["samples"] / sum(t["rep_wall_s"]), 1)
            r["samples_per_s_median_batch"] = round(args.batch / t["median_s"], 1)
        elif r["samples"]:
            r["samples_per_s"] = round(r["samples"] / t["median_s"], 1)
        r["load_average"] = benchlib.loadavg()
    return rows


def training_row(train_path: Path, val_path: Path, args: Any) -> dict[str, Any]:
    """A short fast-preset run with its fetch, collate, step and validation timed."""
    import sparling.train as train_mod
    from sparling.config import load_config
    from sparling.scoring import collate_inputs

    cfg = load_config(REPO / "pipelines" / "configs" / "digit-circle-fast.yaml").with_updates(
        {
            "budget_samples": args.train_samples,
            "val_interval": args.train_samples,
            "batch_size": args.batch,
        }
    )
    times = {"fetch": 0.0, "collate": 0.0, "step": 0.0, "validation": 0.0}
    fetches = {"n": 0}

    class TimedSource:
        """The training set, with every ``__getitem__`` timed (the loop's input fetch)."""

        def __init__(self, ds: Any) -> None:
            self.ds = ds

        def __len__(self) -> int:
            return len(self.ds)

        @property
        def blocks(self) -> Any:
            # the shard boundaries the training loop orders its epochs by: a wrapper that
            # hid them would measure a loop that decodes a shard for nearly every sample
            return self.ds.blocks

        def __getitem__(self, i: int) -> Any:
            t0 = time.perf_counter()
            try:
                return self.ds[i]
            finally:
                times["fetch"] += time.perf_counter() - t0
                fetches["n"] += 1

    def timed_collate(samples: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return collate_inputs(samples)
        finally:
            times["collate"] += time.perf_counter() - t0

    train_ds = counting_dataset(train_path)
    val_ds = counting_dataset(val_path)
    benchlib.set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-data-pipeline-") as tmp:
        trainer = train_mod.make_trainer(
            cfg, TimedSource(train_ds), val_ds, Path(tmp), progress=False
        )
        step, validate = trainer._train_step, trainer._validate_and_schedule

        def timed_step(samples: Any) -> float:
            t0 = time.perf_counter()
            try:
                return step(samples)
            finally:
                times["step"] += time.perf_counter() - t0

        def timed_validate(loss: float) -> None:
            t0 = time.perf_counter()
            try:
                validate(loss)
            finally:
                times["validation"] += time.perf_counter() - t0

        trainer._train_step = timed_step  # type: ignore[method-assign]
        trainer._validate_and_schedule = timed_validate  # type: ignore[method-assign,assignment]
        original_collate = train_mod.collate_inputs
        train_mod.collate_inputs = timed_collate  # the name _train_step calls
        c0, t0 = time.process_time(), time.perf_counter()
        try:
            result = trainer.fit()
        finally:
            train_mod.collate_inputs = original_collate
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    times["step"] -= times["collate"]  # collate runs inside the step
    other = wall - sum(times.values())
    blocked = times["fetch"] + times["collate"]
    return {
        "run": "fast preset, Trainer.fit",
        "threads": args.threads,
        "batch": args.batch,
        "samples": result.samples,
        "wall_s": round(wall, 3),
        "cpu_share": round(cpu / (wall * args.threads), 3),
        "seconds": {k: round(v, 4) for k, v in {**times, "other": other}.items()},
        "fractions": {k: round(v / wall, 4) for k, v in {**times, "other": other}.items()},
        "blocked_on_input_s": round(blocked, 4),
        "blocked_on_input_fraction": round(blocked / wall, 4),
        "fetches": fetches["n"],
        "train_shard_loads": train_ds.shard_loads,
        "train_shard_load_s": round(train_ds.shard_load_s, 4),
        "samples_per_s": round(result.samples / wall, 3),
        "load_average": benchlib.loadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = benchlib.make_parser(__doc__)
    parser.add_argument("--count", type=int, default=100_000, help="training-set size")
    parser.add_argument("--shards", type=int, default=4, help="training-set shards")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="timing per read row (s)")
    parser.add_argument(
        "--max-samples", type=int, default=20_000, help="samples per streaming pass, at most"
    )
    parser.add_argument("--train-samples", type=int, default=640, help="training run length")
    parser.add_argument("--val-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the run")
    parser.add_argument("--skip-training", action="store_true", help="part 1 only")
    parser.add_argument("--work-dir", type=Path, default=WORK / "data")
    parser.add_argument("--out", type=Path, default=RESULTS / "data_pipeline.json")
    args = parser.parse_args(argv)

    load_before = benchlib.loadavg()
    import torch

    torch.set_num_interop_threads(1)
    benchlib.set_threads(args.threads)
    print(f"... dataset ({args.count} samples, {args.shards} shards)", flush=True)
    train_path, gen_s = benchlib.ensure_dataset(
        args.work_dir, "digit-circle", "train", 0, args.count, args.shards
    )
    val_path, _ = benchlib.ensure_dataset(args.work_dir, "digit-circle", "val", 0, args.val_size, 1)
    shard_bytes = sum(f.stat().st_size for f in train_path.glob("*.parquet"))
    print("... read throughput", flush=True)
    rows = read_rows(train_path, args)
    training = None
    if not args.skip_training:
        print(f"... training run ({args.train_samples} samples)", flush=True)
        training = training_row(train_path, val_path, args)

    report = benchlib.write_report(
        args.out,
        argv=argv,
        load_before=load_before,
        settings=vars(args),
        dataset={
            "path": str(train_path),
            "samples": args.count,
            "shards": args.shards,
            "bytes": shard_bytes,
            "generated_s": gen_s,
        },
        training=training,
        results=rows,
    )
    show = [
        {
            **r,
            "ms": 1e3 * r["timing"]["median_s"],
            "reps": r["timing"]["reps"],
            "unit": "batch" if r.get("per_batch") else "pass",
        }
        for r in rows
    ]
    benchlib.print_table(
        show,
        [
            ("read", "read", ""),
            ("samples_per_s", "samples/s", ".0f"),
            ("ms", "median ms", ".1f"),
            ("unit", "per", ""),
            ("shard_loads", "shard reads", "d"),
            ("reps", "reps", "d"),
        ],
    )
    if training is not None:
        f = training["fractions"]
        print(
            f"training run: {training['samples']} samples in {training['wall_s']:.1f} s "
            f"({training['samples_per_s']:.2f}/s, {training['threads']} thread(s)); blocked on "
            f"input {100 * training['blocked_on_input_fraction']:.1f}% (fetch "
            f"{100 * f['fetch']:.1f}%, collate {100 * f['collate']:.1f}%), step "
            f"{100 * f['step']:.1f}%, validation {100 * f['validation']:.1f}%, other "
            f"{100 * f['other']:.1f}%; {training['train_shard_loads']} shard reads"
        )
    benchlib.print_footer(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
