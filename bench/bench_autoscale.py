"""One sweep on an autoscaling Ray cluster against the same sweep on a fixed one-node
cluster: how many runs train at once, the wall time, the nodes launched and how long
they take to go away again.

    .venv/bin/python bench/bench_autoscale.py [--runs N] [--max-nodes M]
        [--modes fixed autoscaling no-placeholders] [--autoscaler v2|v1]
        [--samples S] [--idle-timeout S] [--out FILE]

The clusters are Ray's fake multi-node clusters (``bench/autoscaling_cluster.py``): every
node is a raylet on this machine advertising one logical CPU, as a GPU node of the
``paper`` preset holds one run. Modes:

* ``fixed``: one node of one CPU and no autoscaling (the head holds the CPU);
* ``autoscaling``: a head with no CPU (as in ``infra/``) and up to ``--max-nodes`` worker
  nodes of one CPU, none at the start;
* ``no-placeholders``: the same autoscaling cluster, with the executor's placeholders for
  waiting runs switched off (``ClusterDemand(enabled=False)``, as on one machine: the
  first run starts without room): the executor as it was before them, of which the
  autoscaler sees one run at a time.

The sweep: ``--runs`` seeds of Sparling on DigitCircle with the test suite's tiny model,
one 1-CPU Train worker each, ``--samples`` training samples; its datasets are generated
beforehand on this machine (without Ray) so that no data task launches nodes. It runs as
``sparling sweep --no-tracking --quiet`` in a subprocess with ``RAY_ADDRESS`` set.

Figures per mode: ``wall_s`` (the sweep command, start to exit), ``runs_at_once`` (the
most runs training at the same moment: a run trains from its Train worker's start,
``progress.json``'s ``startup.worker_start``, to its ``result.json``), ``launched`` and
``peak_nodes`` (worker nodes launched, and the most alive at once), ``first_node_s``
(sweep start to the first worker node alive), ``peak_pending`` (the most pending task
bundles the autoscaler saw: the placeholders), and ``scale_down_s`` (sweep end to no
worker node left; the fake cluster's idle timeout is ``--idle-timeout``). The fake nodes
share this machine's cores, so wall times measure start-up overlap far more than
training; on a real cluster each node brings its own cores (or GPU).

Results go to ``bench/results/autoscale.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import benchlib
import yaml
from autoscaling_cluster import AutoscalingCluster, Watch, autoscaling_cluster
from benchlib import REPO, RESULTS, WORK

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
MODES = ("fixed", "autoscaling", "no-placeholders")
#: How long a Ray Train run's registration with Ray's autoscaling coordinator outlives
#: the run when withdrawing it failed (Ray 2.60: 180 s; on a loaded machine its 5 s
#: withdrawal call can time out), keeping its node from being idle-terminated.
TRAIN_REQUEST_EXPIRY_S = 180.0
#: How the ``no-placeholders`` mode starts the sweep: the CLI, with the executor's
#: ``ClusterDemand`` switched off in its process, as on one machine (no placeholders, and
#: the first run started without room).
NO_PLACEHOLDERS = (
    "import sys; from pipelines.executors import ray_executor as r; "
    "init = r.ClusterDemand.__init__; "
    "r.ClusterDemand.__init__ = lambda self, *a, **k: init(self, *a, **{**k, 'enabled': False}); "
    "from pipelines.cli import main; sys.exit(main(sys.argv[1:]))"
)


def base_config(samples: int) -> dict[str, Any]:
    return {
        "domain": {"name": "digit-circle"},
        "data": {"train_size": 64, "val_size": 8, "test_size": 8, "shards": 1},
        "model": {"preset": "fast", "overrides": dict(TINY_MODEL)},
        "bottleneck": {"name": "sparling"},
        "optim": {"lr": 3e-3},
        "schedule": {},
        "compute": {"workers": 1, "cpus_per_worker": 1},
        "batch_size": 8,
        "val_interval": samples,
        "budget_samples": samples,
        "max_output_len": 8,
    }


def write_sweep(folder: Path, runs: int, samples: int) -> Path:
    """The sweep file, and its datasets generated here (no Ray) under ``folder/work``."""
    from sparling.config import RunConfig
    from sparling.datasets import prepare_datasets

    base = base_config(samples)
    prepare_datasets(RunConfig.model_validate(base), folder / "work", progress=False)
    path = folder / "sweep.yaml"
    sweep = {"name": "autoscale", "base": base, "methods": ["sparling"], "seeds": list(range(runs))}
    path.write_text(yaml.safe_dump(sweep))
    return path


def sweep_command(path: Path, work: Path, placeholders: bool = True) -> list[str]:
    args = ["sweep", str(path), "--work-dir", str(work), "--quiet", "--no-tracking"]
    if placeholders:
        return [sys.executable, "-m", "pipelines.cli", *args]
    return [sys.executable, "-c", NO_PLACEHOLDERS, *args]


# -- what the run folders say ------------------------------------------------------------------
def run_intervals(work: Path) -> list[tuple[float, float]]:
    """(start, end) wall-clock times of each finished run's training: from its Train
    worker's start (``progress.json``), or else its result's ``wall_seconds`` before the
    result was written, to when ``result.json`` was written."""
    out = []
    for result in sorted((work / "runs").glob("*/result.json")):
        end = result.stat().st_mtime
        start = end - float(json.loads(result.read_text()).get("wall_seconds", 0.0))
        try:
            progress = json.loads((result.parent / "progress.json").read_text())
            start = min(start, float(progress["startup"]["worker_start"]))
        except (OSError, KeyError, TypeError, ValueError):
            pass
        out.append((start, end))
    return out


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most intervals that hold at the same moment."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    now = best = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def nodes_used(work: Path) -> int:
    """Distinct nodes that trained a run (``result.json``'s ``node_id``)."""
    ids = {json.loads(p.read_text()).get("node_id") for p in (work / "runs").glob("*/result.json")}
    return len(ids - {None})


# -- one mode ----------------------------------------------------------------------------------
def run_mode(
    cluster: AutoscalingCluster,
    sweep: Path,
    work: Path,
    *,
    placeholders: bool,
    scale_down_limit_s: float,
    timeout_s: float,
) -> dict[str, Any]:
    """The sweep on ``cluster``, watched; then (autoscaling clusters) the wait for its
    worker nodes to go away."""
    watch = Watch(cluster).start()
    t0 = time.monotonic()
    done = subprocess.run(
        sweep_command(sweep, work, placeholders),
        cwd=REPO,
        env={**os.environ, **cluster.env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    wall = time.monotonic() - t0
    if done.returncode != 0:
        watch.stop()
        raise RuntimeError(f"the sweep failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    ended = time.monotonic() - watch.t0
    scale_down = None
    if watch.peak("launched"):
        try:
            cluster.wait_for("no worker node left", lambda s: s["alive"] == 0, scale_down_limit_s)
            scale_down = time.monotonic() - watch.t0 - ended
        except TimeoutError:
            pass
    watch.stop()
    intervals = run_intervals(work)
    last = watch.samples[-1][1] if watch.samples else {}
    return {
        "wall_s": wall,
        "runs": len(intervals),
        "runs_at_once": most_at_once(intervals),
        "nodes_used": nodes_used(work),
        "launched": watch.peak("launched"),
        "peak_nodes": watch.peak("alive"),
        "first_node_s": watch.first(lambda s: s["alive"] > 0),
        "peak_pending": watch.peak("pending"),
        "scale_down_s": scale_down,
        "pending_at_end": last.get("pending"),
        "requested_at_end": last.get("requested"),
        "train_s": [round(e - s, 2) for s, e in intervals],
    }


def main(argv: list[str] | None = None) -> int:
    parser = benchlib.make_parser(__doc__)
    parser.add_argument("--runs", type=int, default=4, help="runs in the sweep (seeds)")
    parser.add_argument(
        "--max-nodes", type=int, default=None, help="autoscaling cluster's limit (default --runs)"
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--autoscaler", choices=("v2", "v1"), default="v2")
    parser.add_argument("--samples", type=int, default=96, help="training samples per run")
    parser.add_argument(
        "--idle-timeout", type=float, default=20.0, help="seconds before an idle node goes"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "autoscale.json")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.samples < 8:
        parser.error("--runs must be >= 1 and --samples >= 8 (one batch)")
    max_nodes = args.max_nodes if args.max_nodes is not None else args.runs
    if max_nodes < 1:
        parser.error(f"--max-nodes must be >= 1, got {max_nodes}")

    folder = WORK / "autoscale"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sweep = write_sweep(folder, args.runs, args.samples)
    load_before = benchlib.loadavg()
    results = []
    for mode in args.modes:
        work = folder / mode
        shutil.copytree(folder / "work", work)  # the datasets, generated once
        if mode == "fixed":
            spec: dict[str, Any] = {"max_nodes": 0, "head_resources": {"CPU": 1}}
        else:
            spec = {"max_nodes": max_nodes, "head_resources": {"CPU": 0}}
        print(f"{mode}: starting the cluster ({spec})", flush=True)
        with autoscaling_cluster(
            {"CPU": 1},
            idle_timeout_s=args.idle_timeout,
            autoscaler_v2=args.autoscaler == "v2",
            **spec,
        ) as cluster:
            row = run_mode(
                cluster,
                sweep,
                work,
                placeholders=mode != "no-placeholders",
                scale_down_limit_s=args.idle_timeout + TRAIN_REQUEST_EXPIRY_S + 60,
                timeout_s=1800,
            )
        row = {"mode": mode, **spec, "autoscaler": args.autoscaler, **row}
        print(json.dumps(row), flush=True)
        results.append(row)

    columns = [
        ("mode", "mode", ""),
        ("runs_at_once", "at once", "d"),
        ("wall_s", "wall s", ".1f"),
        ("launched", "launched", "d"),
        ("peak_nodes", "peak nodes", "d"),
        ("first_node_s", "1st node s", ".1f"),
        ("peak_pending", "pending", "d"),
        ("scale_down_s", "down s", ".1f"),
    ]
    benchlib.print_table(results, columns)
    report = benchlib.write_report(
        args.out,
        argv=argv,
        load_before=load_before,
        results=results,
        settings={
            "runs": args.runs,
            "max_nodes": max_nodes,
            "samples": args.samples,
            "idle_timeout_s": args.idle_timeout,
            "autoscaler": args.autoscaler,
        },
    )
    benchlib.print_footer(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
