"""Run a sweep's runs on a machine that has a GPU but neither Ray nor MLflow (the GPU lease).

    python bench/gpu_sweep.py SWEEP.yaml [SWEEP.yaml ...] [--work-dir DIR] [--parallel N]
        [--threads T] [--device cuda] [--deadline S] [--tar FILE]

The GPU machine lent to a session has PyTorch but no Ray or MLflow, and nothing can be
installed there beyond a few small wheels. This script does, without Ray, what
``sparling sweep`` does for each run, and leaves the same files in the same layout:

- the datasets, generated once through the library's shard writer (a process pool
  instead of Ray tasks; the same files, hashes and manifests);
- each run trained by the library's :class:`~sparling.train.Trainer` (``--parallel``
  processes at once sharing the GPU, ``--threads`` torch threads each), its validation
  metrics spooled to ``metrics.spool.jsonl`` exactly as the Ray Train worker spools them
  for MLflow, and ``result.json`` written as the worker writes it;
- each finished run evaluated on its test split (``evaluation.json`` and figures), on
  the GPU.

Back on a machine with the project installed, unpack the runs into the work dir and run
``sparling sweep SWEEP.yaml``: every run is found finished on disk, so the sweep only
creates the MLflow parent and children, sends the spooled metrics and logs the
evaluations; then ``sparling report`` builds the tables from MLflow as for any sweep.

``--deadline``: seconds after which no run is started and running ones are stopped (they
keep their last checkpoint; run the script again to resume them), so that a time-limited
lease always ends with the finished runs evaluated and packed. ``--tar PREFIX``: pack each run's
folder (without checkpoints, which are 9 MB each for the ``fast`` preset) into
``PREFIX-1.tgz``, ``PREFIX-2.tgz``, ... of about 12 MB each.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import socket
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _write_shard(args: tuple[Any, ...]) -> Any:
    from sparling.shards import write_shard

    domain, seed, start, stop, folder, k, n, ds_hash = args
    return write_shard(domain, seed, start, stop, folder, shard=k, num_shards=n, ds_hash=ds_hash)


def local_generator(pool: Any) -> Callable[..., Path]:
    """A dataset generator for ``prepare_datasets`` that writes the shards in ``pool``
    (processes) instead of Ray tasks: the same files, hashes and manifest."""
    from sparling.shards import plan_dataset, read_manifest, write_manifest

    def generate(
        domain: str,
        params: dict[str, Any],
        split: str,
        seed: int,
        count: int,
        shards: int,
        out: Path,
        *,
        progress: bool = True,
    ) -> Path:
        plan = plan_dataset(domain, params, split, seed, count, shards)
        manifest = read_manifest(out) if out.is_dir() else None
        if manifest is None or not manifest.complete:
            out.mkdir(parents=True, exist_ok=True)
            jobs = [
                (plan.domain, plan.seed, a, b, str(out), k, plan.shards, plan.dataset_hash)
                for k, (a, b) in enumerate(plan.ranges)
            ]
            write_manifest(out, plan.manifest(pool.map(_write_shard, jobs)))
        return out

    return generate


def train_and_evaluate(job: dict[str, Any]) -> None:
    """One run, in its own process: train (or resume), write result.json, evaluate."""
    import torch

    from pipelines.sweep import evaluate_run
    from pipelines.sweep_spec import PlannedRun
    from pipelines.tracking import append_to_spool
    from pipelines.train_job import write_result
    from sparling.config import RunConfig
    from sparling.shards import ShardedDataset
    from sparling.train import Callbacks, make_trainer

    torch.set_num_threads(job["threads"])
    config = RunConfig.model_validate(job["config"])
    run_dir = Path(job["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(config.to_json())
    spool = run_dir / "metrics.spool.jsonl"
    progress_path = run_dir / "progress.json"
    t0 = time.time()

    def on_validation(record: dict[str, Any], _checkpoint: Any) -> None:
        numeric = {k: float(v) for k, v in record.items() if isinstance(v, (int, float))}
        points = {k: v for k, v in numeric.items() if k != "samples"}
        append_to_spool(spool, points, int(record["samples"]), int(time.time() * 1000))
        progress_path.write_text(json.dumps({**numeric, "state": "running"}))

    trainer = make_trainer(
        config,
        ShardedDataset(job["train"]),
        ShardedDataset(job["val"]),
        run_dir,
        callbacks=Callbacks(on_validation=on_validation),
        progress=False,
        device=job["device"],
    )
    result = trainer.fit()
    write_result(
        run_dir,
        result,
        node_id=None,
        node_ip=socket.gethostname(),
        device=torch.cuda.get_device_name() if job["device"] == "cuda" else "cpu",
        process_seconds=time.time() - t0,
    )
    progress_path.write_text(
        json.dumps({"samples": result.samples, "state": "finished", "status": result.status})
    )
    run = PlannedRun(config=config, method=job["name"], seed=config.seed)
    evaluate_run(run, Path(job["work_dir"]), test_dir=Path(job["test"]), device=job["device"])


def describe_progress(name: str, info: dict[str, Any]) -> str:
    """One run's state for the progress line: samples, density, last validation accuracy
    and the accuracy bar, from its ``progress.json``."""
    if "samples" not in info:
        return f"{name} starting"
    text = f"{name} @{int(info['samples'])}"
    if "density" in info:
        text += f" density {info['density']:.2e}"
    if "val_accuracy" in info:
        text += f" acc {info['val_accuracy']:.3f}"
    if "threshold" in info:
        text += f" bar {info['threshold']:.3f}"
    return text


def pack(prefix: str, run_dirs: list[Path], part_bytes: int = 12_000_000) -> list[Path]:
    """Each run folder (no checkpoints) into ``PREFIX-1.tgz``, ``PREFIX-2.tgz``, ...: a new
    part once one passes ``part_bytes`` (what comes back from the lease is limited per
    file); unpack them all into the work dir."""
    parts: list[Path] = []
    tar = None
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            continue
        if tar is None or parts[-1].stat().st_size > part_bytes:
            if tar is not None:
                tar.close()
            parts.append(Path(f"{prefix}-{len(parts) + 1}.tgz"))
            tar = tarfile.open(parts[-1], "w:gz")
        for f in sorted(run_dir.rglob("*")):
            rel = f.relative_to(run_dir)
            if f.is_file() and rel.parts[0] != "checkpoints" and f.suffix != ".lock":
                tar.add(f, arcname=str(Path("runs") / run_dir.name / rel))
        tar.fileobj.flush()  # type: ignore[union-attr]
    if tar is not None:
        tar.close()
    for p in parts:
        print(f"packed {p} ({p.stat().st_size / 1e6:.1f} MB)", flush=True)
    return parts


def main(argv: list[str] | None = None) -> int:
    from pipelines.sweep import run_is_finished
    from pipelines.sweep_spec import load_sweep
    from pipelines.train_job import prepare_datasets, run_dir_for

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweeps", nargs="+", help="sweep YAML files")
    ap.add_argument("--work-dir", default="sparling-work")
    ap.add_argument("--parallel", type=int, default=8, help="runs at once")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per run")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--deadline", type=float, default=None, help="seconds; see the docstring")
    ap.add_argument(
        "--seeds-first",
        action="store_true",
        help="within each sweep file, every method's first seed before any second seed",
    )
    ap.add_argument(
        "--tar", default=None, help="pack the run folders (no checkpoints) into TAR-<n>.tgz"
    )
    args = ap.parse_args(argv)
    start = time.monotonic()
    work_dir = Path(args.work_dir).resolve()
    runs = []
    for path in args.sweeps:
        planned = list(load_sweep(path).runs)
        for run in planned:
            if run.after:
                raise SystemExit(f"{path}: run {run.name} depends on another run; not supported")
        if args.seeds_first:  # stable: the methods keep their order within a seed
            planned.sort(key=lambda r: r.seed)
        runs.extend(planned)
    todo = [r for r in runs if not run_is_finished(r.config, work_dir)]
    print(f"{len(runs)} runs, {len(runs) - len(todo)} already finished", flush=True)

    ctx = mp.get_context("spawn")
    jobs = []
    with ctx.Pool(min(os.cpu_count() or 1, 16)) if todo else contextlib.nullcontext() as pool:
        data: dict[str, dict[str, Path]] = {}
        for run in todo:
            c = run.config
            key = json.dumps([c.domain.model_dump(mode="json"), c.data.model_dump(mode="json")])
            if key not in data:
                data[key] = prepare_datasets(c, work_dir, generate=local_generator(pool))
            paths = data[key]
            jobs.append(
                {
                    "name": f"{run.key[:8]} {run.name}",
                    "config": c.model_dump(mode="json"),
                    "run_dir": str(run_dir_for(c, work_dir)),
                    "work_dir": str(work_dir),
                    "train": str(paths["train"]),
                    "val": str(paths["val"]),
                    "test": str(paths["test"]),
                    "threads": args.threads,
                    "device": args.device,
                }
            )
    print(f"datasets ready at {time.monotonic() - start:.0f} s", flush=True)

    pending = list(jobs)
    last_line = ""
    running: dict[str, tuple[Any, dict[str, Any], float]] = {}
    outcome: dict[str, str] = {}
    while pending or running:
        late = args.deadline is not None and time.monotonic() - start > args.deadline
        while pending and len(running) < args.parallel and not late:
            job = pending.pop(0)
            p = ctx.Process(target=train_and_evaluate, args=(job,), name=job["name"])
            p.start()
            running[job["name"]] = (p, job, time.monotonic())
        for name, (p, _job, t) in list(running.items()):
            if not p.is_alive():
                p.join()
                ok = p.exitcode == 0
                outcome[name] = "finished" if ok else f"failed (exit {p.exitcode})"
                print(f"{name}: {outcome[name]} in {time.monotonic() - t:.0f} s", flush=True)
                del running[name]
            elif late:
                p.terminate()
                p.join()
                outcome[name] = "stopped at the deadline"
                print(f"{name}: {outcome[name]}", flush=True)
                del running[name]
        if late:
            for job in pending:
                outcome[job["name"]] = "not started (deadline)"
            pending = []
        if running:
            progress = []
            for name, (_p, job, _t) in running.items():
                try:
                    info = json.loads((Path(job["run_dir"]) / "progress.json").read_text())
                except (OSError, ValueError):
                    info = {}
                progress.append(describe_progress(name, info))
            line = " | ".join(progress)
            if line != last_line:  # a line per validation, not per poll
                print(f"[{time.monotonic() - start:.0f} s] {line}", flush=True)
                last_line = line
            time.sleep(10)
    done = sum(v == "finished" for v in outcome.values())
    print(f"{done}/{len(jobs)} runs finished in {time.monotonic() - start:.0f} s", flush=True)

    if args.tar:
        pack(args.tar, [run_dir_for(r.config, work_dir) for r in runs])
    return 0 if done == len(jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
