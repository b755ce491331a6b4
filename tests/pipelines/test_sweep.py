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
from typing import Any

import pytest
import yaml
from conftest import (
    REPO,
    progress_samples,
    read_only,
    run_sweep_cli,
    subprocess_env,
    sweep_command,
    tiny_config,
)

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

    from pipelines.tracking.server import tracking_uri
    from pipelines.tracking.settings import load_settings

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


def _child_runs(client: Any, experiment: str) -> tuple[Any, list[Any]]:
    """The experiment and its training runs (the sweep's children) as MLflow runs."""
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, experiment
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return exp, [r for r in runs if r.data.tags.get("sparling.kind") == "run"]


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

    resumed = run_sweep_cli(path, work, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert resumed.stdout.count("skipped  already finished") == done_before

    children = [c for c in _children(work) if c["kind"] == "run"]
    keys = [c["key"] for c in children]
    assert len(keys) == 4 and len(set(keys)) == 4, children  # every run exactly once
    assert all(c["status"] == "FINISHED" for c in children), children  # none left RUNNING

    clean = tmp_path / "clean"
    once = run_sweep_cli(path, clean, timeout=900)
    assert once.returncode == 0, once.stdout[-3000:] + once.stderr[-3000:]
    assert _per_seed(work) == _per_seed(clean)
    main_table = (work / "reports" / "e2e" / "report.md").read_text()
    assert "partial" not in main_table.lower()
    assert json.loads((work / "runs").joinpath(keys[0], "evaluation.json").read_text())


def test_tracking_server_restart_mid_sweep_loses_no_metric(tmp_path: Path) -> None:
    """SIGKILL the sweep's MLflow server while two runs log to it, start it again on the
    same store and port a few seconds later: every validation point of every run is in
    MLflow at the end, once, and the runs are FINISHED."""
    from mlflow import MlflowClient

    from pipelines.tracking.server import SERVER_FILE
    from pipelines.tracking.settings import load_settings

    sweep = {
        "name": "restart",
        "base": tiny_config(
            **{"data.train_size": 64, "budget_samples": 8 * 120, "val_interval": 64}
        ),
        "methods": ["sparling", "l1"],
        "seeds": [0],
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep))
    work = tmp_path / "work"
    # Credentials in the environment (as a user of a shared server would have them): none
    # may end up in MLflow (params, tags, artifacts) or in any file or log of the work dir.
    secret = "s3cr3t-" + os.urandom(8).hex()
    # system metrics every second (the default is 10 s): the Ray Train worker logs them
    settings = tmp_path / "mlflow.yaml"
    settings.write_text("logging: {system_metrics_interval: 1}\n")
    proc = subprocess.Popen(
        sweep_command(path, work),
        cwd=REPO,
        env=subprocess_env(
            SPARLING_MLFLOW_CONFIG=str(settings),
            MLFLOW_TRACKING_USERNAME="sweep-user",
            MLFLOW_TRACKING_PASSWORD=secret,
            AWS_SECRET_ACCESS_KEY=secret + "-aws",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server_file = load_settings(work).state_dir / SERVER_FILE
    restarted = None
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            samples = progress_samples(work)
            if len(samples) == 2 and min(samples) >= 2 * 64:
                break
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            time.sleep(0.2)
        else:
            pytest.fail("the runs never started logging")
        info = json.loads(server_file.read_text())
        pid = int(info["pid"])
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        os.kill(pid, signal.SIGKILL)
        killed_at = progress_samples(work)
        time.sleep(8)  # the runs go on training and validating meanwhile
        restarted = subprocess.Popen(
            [c.decode() for c in command],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-4000:]

        client = MlflowClient(f"http://127.0.0.1:{info['port']}")
        exp, children = _child_runs(client, load_settings(work).experiment_for(sweep="restart"))
        assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
        for child in children:
            result = json.loads(
                (work / "runs" / child.data.tags["sparling.run_id"] / "result.json").read_text()
            )
            history = client.get_metric_history(child.info.run_id, "val/exact_match")
            steps = [m.step for m in history]
            # every validation once, including those made while the server was down
            assert len(steps) == len(set(steps)) == result["validations"] == 15, steps
            # every 50th optimizer step of 8 samples (mlflow.yaml's default)
            lr = client.get_metric_history(child.info.run_id, "train/lr")
            assert sorted(m.step for m in lr) == [400, 800]
            assert "system/cpu_utilization_percentage" in child.data.metrics
            assert "test/ce" in child.data.metrics
            # every name grouped (train/, val/, test/, ...): the UI groups the charts
            assert all("/" in k for k in child.data.metrics), sorted(child.data.metrics)
        assert max(killed_at) < 8 * 120  # the kill happened mid-run

        # -- no credential anywhere -----------------------------------------------------
        every = client.search_runs([exp.experiment_id])
        assert len(every) == 3  # the parent and its two children
        for r in every:
            text = json.dumps([r.data.params, r.data.tags, list(r.data.metrics)])
            assert secret not in text, r.info.run_id
            dst = tmp_path / "dl" / r.info.run_id
            dst.mkdir(parents=True)
            local = Path(client.download_artifacts(r.info.run_id, "", str(dst)))
            for f in local.rglob("*"):
                if f.is_file():
                    assert secret.encode() not in f.read_bytes(), f
        assert secret not in out
        for f in work.rglob("*"):
            if f.is_file() and f.stat().st_size < 50_000_000:
                assert secret.encode() not in f.read_bytes(), f
    finally:
        if proc.poll() is None:
            proc.kill()
        if restarted is not None:
            restarted.kill()


def test_corrupted_shard_and_checkpoint_at_sweep_level(tmp_path: Path) -> None:
    """A flipped byte in a dataset shard is caught by its checksum and the shard rebuilt
    before any run reads it; a truncated checkpoint is refused with its path (that run
    fails, the sweep goes on and the other run finishes on verified data)."""
    import hashlib

    sweep = {"name": "corrupt", "base": tiny_config(), "methods": ["sparling"], "seeds": [0]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep))
    work = tmp_path / "work"
    first = run_sweep_cli(path, work, "--no-tracking", timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    (run_dir,) = (work / "runs").glob("*/")
    # corrupt one training shard (a byte flipped in place, same size) ...
    (train,) = [d for d in (work / "data").glob("digit-circle-*") if "train" in d.name]
    shard = sorted(train.glob("*.parquet"))[0]
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    shard.write_bytes(bytes(blob))
    manifest = json.loads((train / "manifest.json").read_text())
    expected = {s["file"]: s["sha256"] for s in manifest["shards"]}
    assert hashlib.sha256(shard.read_bytes()).hexdigest() != expected[shard.name]
    # ... and the first run's checkpoint, with its evaluation gone so the sweep resumes it
    state = run_dir / "checkpoints" / "last" / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    (run_dir / "evaluation.json").unlink()

    sweep["seeds"] = [0, 1]
    path.write_text(yaml.safe_dump(sweep))
    second = run_sweep_cli(path, work, "--no-tracking", timeout=600)
    out = second.stdout + second.stderr
    assert second.returncode == 1, out[-4000:]  # one run failed, and says so
    assert f"regenerating shard 0: {shard}" in out or str(shard) in out, out[-4000:]
    assert hashlib.sha256(shard.read_bytes()).hexdigest() == expected[shard.name]
    assert str(state) in out, out[-4000:]  # the refused checkpoint, by path
    results = {p.parent.name: json.loads(p.read_text()) for p in work.glob("runs/*/result.json")}
    assert len(results) == 2
    new = [k for k in results if k != run_dir.name]
    assert (work / "runs" / new[0] / "evaluation.json").is_file()  # seed 1 finished
    assert not (run_dir / "evaluation.json").exists()  # seed 0 was not evaluated


def test_unwritable_artifact_location_fails_clearly_and_keeps_earlier_results(
    tmp_path: Path,
) -> None:
    """The artifact store turns read-only between two sweeps (a read-only bind mount: a
    real EROFS): the sweep is refused before anything runs, naming the folder and why;
    the earlier run's artifacts are untouched; once writable again the rerun completes."""
    from mlflow import MlflowClient

    from pipelines.tracking.server import tracking_uri
    from pipelines.tracking.settings import load_settings

    sweep = {"name": "ro", "base": tiny_config(), "methods": ["sparling"], "seeds": [0]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep))
    work = tmp_path / "work"

    first = run_sweep_cli(path, work, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    artifacts = work / "mlflow" / "artifacts"
    before = sorted(str(p.relative_to(artifacts)) for p in artifacts.rglob("*") if p.is_file())
    assert any("activations.png" in p for p in before)

    with read_only(artifacts):
        sweep["seeds"] = [0, 1]
        path.write_text(yaml.safe_dump(sweep))
        second = run_sweep_cli(path, work, timeout=600)
    out = second.stdout + second.stderr
    assert second.returncode != 0, out[-4000:]
    # refused before anything ran, naming the folder and the reason
    assert f"artifact folder {artifacts} is not writable" in out, out[-4000:]
    assert "Read-only file system" in out, out[-4000:]
    assert len(list((work / "runs").glob("*/"))) == 1  # the new run was not started
    after = sorted(str(p.relative_to(artifacts)) for p in artifacts.rglob("*") if p.is_file())
    assert after == before  # nothing of the earlier run lost or changed
    # writable again: the rerun skips the finished run and runs the new one
    third = run_sweep_cli(path, work, timeout=600)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert third.stdout.count("skipped  already finished") == 1, third.stdout[-3000:]
    settings = load_settings(work)
    with tracking_uri(settings) as uri:
        client = MlflowClient(uri)
        _, children = _child_runs(client, settings.experiment_for(sweep="ro"))
        assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
        for c in children:
            names = [a.path for a in client.list_artifacts(c.info.run_id, "evaluation")]
            assert names, c.info.run_id


def test_the_sweep_parent_status_follows_its_runs() -> None:
    from pipelines.executors.base import RunOutcome
    from pipelines.sync import parent_status

    def outcomes(*statuses: str) -> dict[str, RunOutcome]:
        return {str(i): RunOutcome(str(i), f"run {i}", s, "") for i, s in enumerate(statuses)}

    assert parent_status(outcomes("finished", "skipped")) == "FINISHED"
    assert parent_status(outcomes()) == "FINISHED"
    assert parent_status(outcomes("finished", "stopped")) == "KILLED"
    assert parent_status(outcomes("stopped", "failed", "finished")) == "FAILED"
