"""A 2-method x 2-seed sweep of tiny runs, end to end on local Ray with a real MLflow
store: killed part-way, restarted, then compared with a sweep that was never interrupted."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, subprocess_env, sweep_command, tiny_config

pytestmark = pytest.mark.integration

SWEEP = {
    "name": "e2e",
    "base": tiny_config(**{"budget_samples": 64, "val_interval": 16}),
    "methods": ["sparling", "non-sparse"],
    "seeds": [0, 1],
}


def _children(work: Path) -> list[dict[str, str]]:
    """Every child run of the sweep in MLflow: (key, status) read back through the server."""
    from mlflow import MlflowClient

    from pipelines.tracking import load_settings, tracking_uri

    settings = load_settings(work)
    with tracking_uri(settings) as uri:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(settings.experiment_for(sweep="e2e"))
        assert exp is not None
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        return [
            {
                "key": r.data.tags.get("sparling.run_id", ""),
                "status": r.info.status,
                "kind": r.data.tags.get("sparling.kind", ""),
            }
            for r in runs
        ]


def _per_seed(work: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader((work / "reports" / "e2e" / "per_seed.csv").open()))
    return [{k: v for k, v in r.items() if "wall" not in k} for r in rows]


def test_killed_sweep_resumes_without_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "e2e.yaml"
    path.write_text(yaml.safe_dump(SWEEP))
    work = tmp_path / "interrupted"

    proc = subprocess.Popen(
        sweep_command(path, work),
        cwd=REPO,
        env=subprocess_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Kill the driver (and its Ray and tracking server) once a run has finished while
    # others are still to do.
    deadline = time.monotonic() + 400
    runs = work / "runs"
    while time.monotonic() < deadline:
        finished = list(runs.glob("*/evaluation.json")) if runs.exists() else []
        if finished or proc.poll() is not None:
            break
        time.sleep(1)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # Ray's worker processes are not in the driver's process group: give the orphans the
    # few seconds Ray takes to notice the driver is gone (one may still finish its run).
    time.sleep(15)
    done_before = len(list(runs.glob("*/evaluation.json")))
    assert 1 <= done_before < 4

    resumed = subprocess.run(
        sweep_command(path, work),
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert resumed.stdout.count("skipped  already finished") == done_before

    children = [c for c in _children(work) if c["kind"] == "run"]
    keys = [c["key"] for c in children]
    assert len(keys) == 4 and len(set(keys)) == 4, children  # every run exactly once
    assert all(c["status"] == "FINISHED" for c in children), children  # none left RUNNING

    clean = tmp_path / "clean"
    once = subprocess.run(
        sweep_command(path, clean),
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert once.returncode == 0, once.stdout[-3000:] + once.stderr[-3000:]
    assert _per_seed(work) == _per_seed(clean)
    main_table = (work / "reports" / "e2e" / "report.md").read_text()
    assert "partial" not in main_table.lower()
    assert json.loads((work / "runs").joinpath(keys[0], "evaluation.json").read_text())
