"""``bench/gpu_sweep.py``: a sweep's runs on a machine without Ray or MLflow (the GPU
lease), then logged to MLflow and reported by ``sparling sweep`` here. Run on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_sweep_cli, subprocess_env, tiny_config

pytestmark = pytest.mark.integration


def test_runs_made_without_ray_are_logged_and_reported_by_the_sweep(tmp_path: Path) -> None:
    sweep = {
        "name": "lease",
        "base": tiny_config(**{"budget_samples": 32, "val_interval": 16}),
        "methods": ["sparling", "l1"],
        "seeds": [0],
    }
    path = tmp_path / "lease.yaml"
    path.write_text(yaml.safe_dump(sweep))
    lease = tmp_path / "lease-work"
    cmd = [sys.executable, "bench/gpu_sweep.py", str(path), "--work-dir", str(lease)]
    cmd += ["--device", "cpu", "--parallel", "2", "--threads", "1"]
    cmd += ["--tar", str(tmp_path / "runs")]
    out = subprocess.run(
        cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2/2 runs finished" in out.stdout

    runs = sorted((lease / "runs").iterdir())
    assert len(runs) == 2
    for run in runs:
        result = json.loads((run / "result.json").read_text())
        assert result["samples"] == 32 and result["status"] == "budget-exhausted"
        ev = json.loads((run / "evaluation.json").read_text())
        assert 0.0 <= ev["test_e2ee"] <= 1.0 and ev["test_checkpoint_samples"] == 32
        spooled = [json.loads(line) for line in (run / "metrics.spool.jsonl").open()]
        assert {(p["k"], p["s"]) for p in spooled} >= {("val_accuracy", 16), ("val_accuracy", 32)}
        assert (run / "checkpoints" / "last").is_dir()

    # Packed without checkpoints; every run's files are there.
    parts = sorted(tmp_path.glob("runs-*.tgz"))
    assert parts
    names = [n for p in parts for n in tarfile.open(p).getnames()]
    assert not [n for n in names if "/checkpoints/" in n]
    assert {n.split("/")[1] for n in names} == {r.name for r in runs}

    # A second call finds them finished and trains nothing.
    again = subprocess.run(
        cmd[:-2], cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600
    )
    assert "2 runs, 2 already finished" in again.stdout, again.stdout + again.stderr

    # Here: unpack into a fresh work dir; the sweep logs them to MLflow without training.
    work = tmp_path / "work"
    for p in parts:
        tarfile.open(p).extractall(work, filter="data")
    done = run_sweep_cli(path, work)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 skipped" in done.stdout

    from mlflow import MlflowClient

    from pipelines.tracking import load_settings, tracking_uri

    settings = load_settings(work)
    with tracking_uri(settings) as uri:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(settings.experiment_for(sweep="lease"))
        assert exp is not None
        children = [
            r
            for r in client.search_runs([exp.experiment_id])
            if r.data.tags.get("sparling.kind") == "run"
        ]
        assert len(children) == 2
        for child in children:
            assert child.info.status == "FINISHED"
            assert "test_e2ee" in child.data.metrics
            history = client.get_metric_history(child.info.run_id, "val_accuracy")
            assert sorted(m.step for m in history) == [16, 32]  # sent from the spool
