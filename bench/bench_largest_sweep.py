"""The largest sweep run on this machine, and what it left in MLflow.

    .venv/bin/python bench/bench_largest_sweep.py [--methods M ...] [--seeds N]
        [--budget SAMPLES] [--work-dir DIR] [--out FILE]

Runs ``sparling sweep`` (local Ray, the embedded MLflow store) over methods x seeds of a
tiny DigitCircle config, times it, then reads MLflow back and counts: child runs per run
key (duplicates), their statuses (none left RUNNING), and for every run the metric points
of each validation metric against the validations in its ``result.json`` (points lost or
doubled). Results go to ``--out`` (JSON) for docs/reliability.md.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import benchlib
from bench_sweep import TINY_MODEL
from benchlib import REPO, RESULTS


def main(argv: list[str] | None = None) -> int:
    parser = benchlib.make_parser(__doc__)
    parser.add_argument(
        "--methods", nargs="+", default=["sparling", "sparling-st", "l1", "non-sparse"]
    )
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--budget", type=int, default=160, help="training samples per run")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "largest_sweep.json")
    args = parser.parse_args(argv)

    import json

    import yaml
    from mlflow import MlflowClient

    from pipelines.tracking.server import tracking_uri
    from pipelines.tracking.settings import load_settings
    from sparling.runs import RunFolder

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="sparling-largest-"))
    sweep = {
        "name": "largest",
        "base": {
            "domain": {"name": "digit-circle"},
            "data": {"train_size": 64, "val_size": 16, "test_size": 32, "shards": 2},
            "model": {"preset": "fast", "overrides": TINY_MODEL},
            "optim": {"lr": 3e-3},
            "batch_size": 8,
            "val_interval": 32,
            "budget_samples": args.budget,
            "max_output_len": 8,
        },
        "methods": args.methods,
        "seeds": list(range(args.seeds)),
    }
    path = work / "largest.yaml"
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(sweep))
    load_before = benchlib.loadavg()
    t0 = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "sweep",
            str(path),
            "--work-dir",
            str(work),
            "--quiet",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - t0
    print(done.stdout[-3000:])
    expected = len(args.methods) * args.seeds
    settings = load_settings(work)
    with tracking_uri(settings) as uri:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(settings.experiment_for(sweep="largest"))
        runs = client.search_runs([exp.experiment_id], max_results=5000) if exp else []
        children = [r for r in runs if r.data.tags.get("sparling.kind") == "run"]
        keys = Counter(r.data.tags.get("sparling.run_id") for r in children)
        lost = doubled = points = 0
        for r in children:
            result = json.loads(
                RunFolder.of(r.data.tags["sparling.run_id"], work).result_path.read_text()
            )
            for metric in ("val/exact_match", "train/loss", "schedule/density"):
                steps = [m.step for m in client.get_metric_history(r.info.run_id, metric)]
                points += len(steps)
                lost += max(0, result["validations"] - len(set(steps)))
                doubled += len(steps) - len(set(steps))
    row: dict[str, Any] = {
        "runs_expected": expected,
        "child_runs": len(children),
        "duplicate_keys": sum(c - 1 for c in keys.values() if c > 1),
        "statuses": dict(Counter(r.info.status for r in children)),
        "metric_points_checked": points,
        "metric_points_lost": lost,
        "metric_points_doubled": doubled,
        "wall_s": round(wall, 1),
        "concurrency": "one run per CPU (2 at once on this machine)",
        "exit_code": done.returncode,
        "work_dir": str(work),
    }
    print(json.dumps(row, indent=2))
    benchlib.write_report(
        args.out, argv=argv, load_before=load_before, results=[row], settings=vars(args)
    )
    return 0 if done.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
