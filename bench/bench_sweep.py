"""Sweep overhead: N identical short runs through ``run_sweep`` (Ray, with and without
MLflow) against the same runs in a plain loop, and one 2-thread run against two 1-thread
runs.

    .venv/bin/python bench/bench_sweep.py [--runs N] [--samples S] [--preset fast|tiny]
        [--modes loop sweep sweep-tracked parallel] [--loop-threads T] [--out FILE]

The runs: DigitCircle, Sparling, ``--preset`` (``fast``, or ``tiny``: the test suite's
tiny model), ``--samples`` training samples each with one validation at the end, then
evaluation on the test split; seeds 0..N-1, so the runs cost the same but are distinct
runs (a sweep refuses duplicates). Their datasets are generated once, without Ray,
into ``sparling-work/bench/sweep/data`` (the config's ``data.root``), so no mode pays
for generation. Each mode works in a fresh folder.

Modes:

* ``loop``: for each run, ``make_trainer(...).fit()`` on the sharded datasets, then
  ``evaluate_checkpoint`` (what the sweep's task does, minus Ray and MLflow), one after
  another, with ``--loop-threads`` torch threads (default: every CPU);
* ``sweep``: ``run_sweep(track=False)`` on a fresh local Ray: one Ray task per run, each
  a ``TorchTrainer`` job with one worker of 1 CPU (1 thread), as many at once as there
  are CPUs;
* ``sweep-tracked``: the same with ``track=True`` (the local MLflow server, a parent
  run and a child run per run);
* ``parallel``: plain ``fit()`` only: one run with 2 threads in one process, against two
  runs with 1 thread each in two processes at once.

Timing of a run: ``submitted`` is when its loop iteration began (loop) or when
``run_sweep`` was called (sweep: all runs are submitted together, then Ray queues those
that do not fit); ``task start`` is when the Ray task began (a thin wrapper around
``pipelines.executors.ray_executor.execute_run`` records it); ``first step`` is when the
first training step finished (loop: the first ``on_progress`` call; sweep:
``progress.json`` appearing, polled every 50 ms). Start-up = first step - start - one step (the run's mean step time,
from its later progress), i.e. the time until the first step began. For the sweep both
``submit_to_first_step`` (includes Ray start, queueing and the tracking server) and
``task_to_first_step`` (the per-run set-up: Train controller and worker processes,
imports, datasets, model) are given. Throughput: training samples of all runs / wall
time of the whole mode; the sweep's ratio is against the loop. The project's goals:
start-up < 10 s, sweep throughput >= 90% of the plain loop.

Short by default (4 runs of 320 samples); ``--samples`` sizes the runs (the fast preset
does about 7 samples/s per thread on a 2-core EPYC, so ``--samples 4000`` is about ten
minutes a run). Results go to ``bench/results/sweep.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import benchlib
from benchlib import RESULTS, WORK

#: the test suite's tiny model (tests/conftest.py): a few ms per step
TINY_MODEL: dict[str, Any] = {
    "d_model": 32,
    "ff": 64,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "heads": 2,
    "width": 8,
    "cr": 2,
}
GOAL_STARTUP_S = 10.0
GOAL_RATIO = 0.90


# -- the runs --------------------------------------------------------------------------------
def sweep_dict(args: Any, data_root: Path, seeds: list[int]) -> dict[str, Any]:
    base = {
        "domain": {"name": "digit-circle"},
        "data": {
            "train_size": args.train_size,
            "val_size": args.val_size,
            "test_size": args.test_size,
            "shards": 2,
            "root": str(data_root),
        },
        "model": {
            "preset": "fast",
            "overrides": dict(TINY_MODEL) if args.preset == "tiny" else {},
        },
        "bottleneck": {"name": "sparling"},
        "optim": {"name": "adamw", "lr": 1e-3},
        "compute": {"workers": 1, "cpus_per_worker": 1},
        "batch_size": args.batch,
        "val_interval": args.samples,
        "budget_samples": args.samples,
        "max_output_len": 10,
    }
    return {"name": "bench-sweep", "base": base, "methods": ["sparling"], "seeds": seeds}


def build(args: Any, data_root: Path, seeds: list[int]) -> Any:
    from pipelines.plan import build_sweep

    return build_sweep(sweep_dict(args, data_root, seeds), source="bench_sweep.py")


def ensure_data(config: Any) -> dict[str, Path]:
    """The run's three datasets under ``data.root``, named as ``prepare_datasets`` names them."""
    d = config.data
    out = {}
    for split, count in (("train", d.train_size), ("val", d.val_size), ("test", d.test_size)):
        shards = max(1, min(d.shards, count))
        out[split], _ = benchlib.ensure_dataset(
            Path(d.root), config.domain.name, split, d.seed, count, shards
        )
    return out


def step_estimate(points: list[tuple[float, int]], batch: int) -> float | None:
    """Mean seconds per training step from (time, samples) observations."""
    if len(points) < 2 or points[-1][1] <= points[0][1]:
        return None
    (t0, s0), (t1, s1) = points[0], points[-1]
    return (t1 - t0) / ((s1 - s0) / batch)


def startup(first: float | None, start: float, step: float | None) -> float | None:
    if first is None:
        return None
    return round(first - start - (step or 0.0), 3)


# -- plain loop ------------------------------------------------------------------------------
def plain_run(config: Any, paths: dict[str, Path], run_dir: Path, evaluate: bool) -> dict:
    """One run without Ray or MLflow: make_trainer().fit(), then (optionally) evaluation."""
    from sparling.evaluate import evaluate_checkpoint
    from sparling.runs import RunFolder
    from sparling.shards import ShardedDataset
    from sparling.train import Callbacks, make_trainer

    points: list[tuple[float, int]] = []
    start = time.time()
    folder = RunFolder(run_dir)
    folder.write_config(config)  # as run_training writes it
    trainer = make_trainer(
        config,
        ShardedDataset(paths["train"]),
        ShardedDataset(paths["val"]),
        run_dir,
        callbacks=Callbacks(on_progress=lambda info: points.append((time.time(), info["samples"]))),
        progress=False,
    )
    result = trainer.fit()
    trained = time.time()
    if evaluate:
        evaluate_checkpoint(
            folder.select_checkpoint(),
            ShardedDataset(paths["test"]),
            out_dir=folder.evaluation_dir,
        )
    end = time.time()
    step = step_estimate(points, config.batch_size)
    first = points[0][0] if points else None
    return {
        "samples": result.samples,
        "start": start,
        "first_step_s": None if first is None else round(first - start, 3),
        "step_s": None if step is None else round(step, 4),
        "startup_s": startup(first, start, step),
        "train_s": round(trained - start, 3),
        "eval_s": round(end - trained, 3),
        "total_s": round(end - start, 3),
    }


def mode_loop(sweep: Any, paths: dict[str, Path], work: Path, threads: int) -> dict[str, Any]:
    from sparling.runs import RunFolder

    benchlib.set_threads(threads)
    t0 = time.time()
    per_run = []
    for run in sweep.runs:
        row = plain_run(run.config, paths, RunFolder.of(run.key, work).path, evaluate=True)
        per_run.append({"key": run.key, "name": run.name, "status": "finished", **row})
    wall = time.time() - t0
    for r in per_run:
        r["submit_to_first_step_s"] = r["startup_s"]
    return {"threads": threads, "wall_s": round(wall, 3), "per_run": per_run}


# -- Ray sweep -------------------------------------------------------------------------------
def timed_execute_run(run: Any, work_dir: Path, tracking: Any) -> Any:
    """``pipelines.executors.ray_executor.execute_run`` with its start/end written beside the
    runs (shipped to the Ray worker by value; there ``ray_executor`` is not patched)."""
    import json
    import time
    from pathlib import Path

    from pipelines.executors.ray_executor import execute_run

    stamp = Path(work_dir) / "bench-timing" / f"{run.key}.json"
    stamp.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    stamp.write_text(json.dumps({"task_start": start}))
    outcome = execute_run(run, work_dir, tracking)
    stamp.write_text(json.dumps({"task_start": start, "task_end": time.time()}))
    return outcome


class ProgressPoller:
    """Polls each run's ``progress.json``: when it appeared and (time, samples) changes."""

    def __init__(self, progress_files: dict[str, Path], interval: float = 0.05) -> None:
        self.progress_files = progress_files
        self.interval = interval
        self.points: dict[str, list[tuple[float, int]]] = {k: [] for k in progress_files}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> ProgressPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            for key, path in self.progress_files.items():
                try:
                    info = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                samples = info.get("samples")
                pts = self.points[key]
                if isinstance(samples, (int, float)) and (not pts or pts[-1][1] != samples):
                    pts.append((now, int(samples)))
            self._stop.wait(self.interval)


def mode_sweep(sweep: Any, work: Path, track: bool) -> dict[str, Any]:
    import ray

    import pipelines.executors.ray_executor as ray_executor
    from pipelines.sweep import run_sweep
    from sparling.runs import RunFolder

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # Ray's workers inherit it (as in CI)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    folders = {r.key: RunFolder.for_config(r.config, work) for r in sweep.runs}
    original = ray_executor.execute_run
    ray_executor.execute_run = timed_execute_run  # looked up when the executor builds its task
    t0 = time.time()
    try:
        with ProgressPoller({k: f.progress_path for k, f in folders.items()}) as poller:
            summary = run_sweep(sweep, work, progress=False, track=track)
    finally:
        ray_executor.execute_run = original
        wall = time.time() - t0
        ray.shutdown()
    per_run = []
    for run, outcome in zip(sweep.runs, summary.outcomes, strict=True):
        pts = poller.points[run.key]
        stamp = _read(work / "bench-timing" / f"{run.key}.json")
        task_start = stamp.get("task_start")
        result = _read(folders[run.key].result_path)
        step = step_estimate(pts, run.config.batch_size)
        first = pts[0][0] if pts else None
        per_run.append(
            {
                "key": run.key,
                "name": run.name,
                "status": outcome.status,
                "reason": outcome.reason,
                "samples": result.get("samples", 0),
                "task_start_s": None if task_start is None else round(task_start - t0, 3),
                "first_step_s": None if first is None else round(first - t0, 3),
                "step_s": None if step is None else round(step, 4),
                "submit_to_first_step_s": startup(first, t0, step),
                "task_to_first_step_s": (
                    None if task_start is None else startup(first, task_start, step)
                ),
                "task_s": (
                    None
                    if task_start is None or "task_end" not in stamp
                    else round(stamp["task_end"] - task_start, 3)
                ),
                "progress_points": len(pts),
                "startup_breakdown_s": startup_breakdown(
                    task_start,
                    _read(folders[run.key].progress_path).get("startup"),
                    first,
                    step,
                ),
            }
        )
    return {
        "track": track,
        "wall_s": round(wall, 3),
        "sweep_wall_s": round(summary.wall_seconds, 3),
        "counts": summary.counts(),
        "per_run": per_run,
    }


def startup_breakdown(
    task_start: float | None,
    stamps: dict[str, float] | None,
    first: float | None,
    step: float | None,
) -> dict[str, float] | None:
    """Seconds spent in each stage of a run's start-up, from the Ray task's start to the
    first training step: ``task_to_fit`` (driver task: datasets checked, Ray Train job
    built), ``fit_to_worker`` (Train controller and worker processes started, process
    group set up), ``worker_imports``, ``worker_data`` (datasets opened),
    ``worker_trainer`` (model, optimiser, checkpoint restore), ``trainer_to_first_step``
    (less one step). From the stamps ``train_worker`` writes into ``progress.json``."""
    keys = ("fit_call", "worker_start", "imports", "data", "trainer")
    if task_start is None or not stamps or any(k not in stamps for k in keys) or first is None:
        return None
    points = [task_start, *(stamps[k] for k in keys), first - (step or 0.0)]
    names = (
        "task_to_fit",
        "fit_to_worker",
        "worker_imports",
        "worker_data",
        "worker_trainer",
        "trainer_to_first_step",
    )
    return {n: round(b - a, 3) for n, a, b in zip(names, points[:-1], points[1:], strict=True)}


def _read(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return {}


# -- 1 x 2 threads against 2 x 1 thread ------------------------------------------------------
def child_fit(config_json: str, paths: dict[str, str], run_dir: str, threads: int) -> dict:
    """Body of a child process: one plain run (training only) with ``threads`` threads."""
    import torch

    from sparling.config import load_config

    torch.set_num_threads(threads)
    config = load_config(json.loads(config_json))
    row = plain_run(config, {k: Path(v) for k, v in paths.items()}, Path(run_dir), False)
    return {**row, "threads": threads, "pid": os.getpid()}


def mode_parallel(sweep: Any, paths: dict[str, Path], work: Path) -> dict[str, Any]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("spawn")
    str_paths = {k: str(v) for k, v in paths.items()}
    runs = sweep.runs[:2]
    out: dict[str, Any] = {}
    for label, jobs in (
        ("1 run x 2 threads", [(runs[0], 2)]),
        ("2 runs x 1 thread", [(runs[0], 1), (runs[1], 1)]),
    ):
        t0 = time.time()
        with ProcessPoolExecutor(max_workers=len(jobs), mp_context=ctx) as pool:
            futures = [
                pool.submit(
                    child_fit,
                    run.config.to_json(),
                    str_paths,
                    str(work / label.replace(" ", "") / run.key),
                    threads,
                )
                for run, threads in jobs
            ]
            rows = [f.result() for f in futures]
        wall = time.time() - t0
        # Training wall from the first child start to the last child end (no interpreter
        # start-up), and the whole thing including process start.
        fit_wall = max(r["start"] + r["train_s"] for r in rows) - min(r["start"] for r in rows)
        samples = sum(r["samples"] for r in rows)
        out[label] = {
            "wall_s": round(wall, 3),
            "fit_wall_s": round(fit_wall, 3),
            "samples": samples,
            "samples_per_s": round(samples / fit_wall, 4),
            "per_run": rows,
        }
    one, two = out["1 run x 2 threads"], out["2 runs x 1 thread"]
    out["ratio_2x1_to_1x2"] = round(two["samples_per_s"] / one["samples_per_s"], 4)
    return out


# -- main --------------------------------------------------------------------------------------
def summarize_mode(name: str, res: dict[str, Any], loop_rate: float | None) -> dict[str, Any]:
    per_run = res["per_run"]
    samples = sum(r.get("samples") or 0 for r in per_run)
    res["mode"] = name
    res["samples"] = samples
    res["samples_per_s"] = round(samples / res["wall_s"], 4) if res["wall_s"] else None
    for key in ("submit_to_first_step_s", "task_to_first_step_s", "startup_s"):
        vals = [r[key] for r in per_run if r.get(key) is not None]
        if vals:
            res[f"{key}_median"] = round(statistics.median(vals), 3)
            res[f"{key}_max"] = round(max(vals), 3)
    if loop_rate and res["samples_per_s"]:
        res["ratio_to_loop"] = round(res["samples_per_s"] / loop_rate, 4)
    res["load_average"] = benchlib.loadavg()
    return res


def main(argv: list[str] | None = None) -> int:
    parser = benchlib.make_parser(__doc__)
    parser.add_argument("--runs", type=int, default=4, help="identical runs (seeds 0..N-1)")
    parser.add_argument("--samples", type=int, default=320, help="training samples per run")
    parser.add_argument("--preset", choices=("fast", "tiny"), default="fast")
    parser.add_argument("--batch", type=int, help="batch size (None: 32 fast, 8 tiny)")
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--val-size", type=int, default=64)
    parser.add_argument("--test-size", type=int, default=64)
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=("loop", "sweep", "sweep-tracked", "parallel"),
        default=["loop", "sweep", "sweep-tracked", "parallel"],
    )
    parser.add_argument(
        "--loop-threads", type=int, default=os.cpu_count() or 1, help="threads of the plain loop"
    )
    parser.add_argument("--work-dir", type=Path, default=WORK / "sweep")
    parser.add_argument("--keep", action="store_true", help="keep the run folders")
    parser.add_argument("--out", type=Path, default=RESULTS / "sweep.json")
    args = parser.parse_args(argv)
    if args.batch is None:
        args.batch = 32 if args.preset == "fast" else 8
    if "parallel" in args.modes and args.runs < 2:
        parser.error("the parallel mode needs --runs >= 2")

    load_before = benchlib.loadavg()
    import torch

    torch.set_num_interop_threads(1)
    data_root = (args.work_dir / "data").resolve()
    sweep = build(args, data_root, list(range(args.runs)))
    print(f"... datasets under {data_root}", flush=True)
    paths = ensure_data(sweep.runs[0].config)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    modes: dict[str, Any] = {}
    loop_rate = None
    for name in args.modes:
        work = (args.work_dir / f"{stamp}-{name}").resolve()
        work.mkdir(parents=True, exist_ok=True)
        print(f"... {name} ({args.runs} runs x {args.samples} samples)", flush=True)
        try:
            paths = ensure_data(sweep.runs[0].config)  # cheap when present; redone if removed
            if name == "loop":
                res = mode_loop(sweep, paths, work, args.loop_threads)
            elif name in ("sweep", "sweep-tracked"):
                res = mode_sweep(sweep, work, track=name == "sweep-tracked")
            else:
                res = mode_parallel(sweep, paths, work)
        except Exception as e:  # reported, not fatal (e.g. no tracking server)
            modes[name] = {"mode": name, "status": "failed", "error": f"{type(e).__name__}: {e}"}
            print(f"    failed: {modes[name]['error'][:300]}", flush=True)
            continue
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        res["mode"] = name
        if name != "parallel":
            res = summarize_mode(name, res, loop_rate)
            if name == "loop":
                loop_rate = res["samples_per_s"]
        res["status"] = "ok"
        modes[name] = res
    if loop_rate:  # a sweep mode measured before the loop (other --modes order)
        for name, res in modes.items():
            if name.startswith("sweep") and res.get("samples_per_s"):
                res["ratio_to_loop"] = round(res["samples_per_s"] / loop_rate, 4)

    report = benchlib.write_report(
        args.out,
        argv=argv,
        load_before=load_before,
        settings={**vars(args), "runs_config": sweep.runs[0].config.model_dump(mode="json")},
        results=[modes[m] for m in args.modes],
    )
    rows = [
        {
            **r,
            "n": len(r["per_run"]),
            "statuses": ", ".join(sorted({p["status"] for p in r["per_run"]})),
        }
        for r in modes.values()
        if r.get("status") == "ok" and r["mode"] != "parallel"
    ]
    benchlib.print_table(
        rows,
        [
            ("mode", "mode", ""),
            ("n", "runs", "d"),
            ("statuses", "status", ""),
            ("wall_s", "wall s", ".1f"),
            ("samples_per_s", "samples/s", ".2f"),
            ("ratio_to_loop", "x loop", ".2f"),
            ("submit_to_first_step_s_median", "submit->step s (med)", ".1f"),
            ("submit_to_first_step_s_max", "(max)", ".1f"),
            ("task_to_first_step_s_median", "task->step s (med)", ".1f"),
        ],
    )
    for name, r in modes.items():
        for p in r.get("per_run", []) if r.get("status") == "ok" else []:
            parts = p.get("startup_breakdown_s") if isinstance(p, dict) else None
            if parts:
                print(
                    f"{name} {p['name']} start-up (s): "
                    + ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
                )
    par = modes.get("parallel")
    if par and par.get("status") == "ok":
        a, b = par["1 run x 2 threads"], par["2 runs x 1 thread"]
        print(
            f"1 run x 2 threads: {a['samples_per_s']:.2f} samples/s; 2 runs x 1 thread: "
            f"{b['samples_per_s']:.2f} samples/s (x{par['ratio_2x1_to_1x2']:.2f})"
        )
    for name, r in modes.items():
        if r.get("status") != "ok":
            print(f"{name}: {r['error'][:500]}")
        else:
            for p in r.get("per_run", []):
                if isinstance(p, dict) and p.get("status") == "failed":
                    print(f"{name}: run {p['name']} failed: {p.get('reason', '')[:300]}")
    print(f"goals: start-up < {GOAL_STARTUP_S:.0f} s, sweep >= {100 * GOAL_RATIO:.0f}% of loop")
    benchlib.print_footer(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
