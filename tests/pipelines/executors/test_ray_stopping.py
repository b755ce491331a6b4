"""Stopping a sweep of the Ray executor: a real SIGTERM to the sweep's driver while one run
trains on a local Ray and another waits for its CPU. Both are reported stopped (never
failed), their MLflow children and the parent end KILLED, and the sweep run again resumes
the stopped run from the step it was stopped on."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import local_ray, tiny_config

from sparling.runs import RunFolder

pytestmark = pytest.mark.integration

BATCH = 16


@pytest.fixture
def one_cpu_ray() -> Iterator[None]:
    """A local Ray with one CPU: a sweep's second run waits for the first to end."""
    with local_ray(num_cpus=1):
        yield


def _progress(run_dir: Path) -> dict[str, Any]:
    return RunFolder(run_dir).read_progress() or {}


def _mlflow_runs(work: Path, sweep: str) -> dict[str, Any]:
    """The sweep's parent (``"parent"``) and its children by run key, read from MLflow."""
    from mlflow import MlflowClient

    from pipelines.tracking.server import tracking_uri
    from pipelines.tracking.settings import load_settings

    settings = load_settings(work)
    with tracking_uri(settings) as uri:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(settings.experiment_for(sweep=sweep))
        assert exp is not None
        out: dict[str, Any] = {}
        for r in client.search_runs([exp.experiment_id]):
            kind = r.data.tags.get("sparling.kind")
            out["parent" if kind == "sweep" else r.data.tags["sparling.run_id"]] = r
    return out


def test_sigterm_to_a_ray_sweep_stops_its_runs_resumably(
    one_cpu_ray: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.tracking.server import tracking_uri
    from pipelines.tracking.settings import load_settings

    work = tmp_path / "work"
    # one tracking server for both sweeps, as `sparling sweep` holds one for the command
    # (MLflow caches each run's artifact location, the server's address, per process)
    with tracking_uri(load_settings(work)):
        _stop_and_resume(work, capsys)


def _stop_and_resume(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.plan import SweepOverrides, build_sweep
    from pipelines.sweep import run_sweep
    from sparling.checkpoint import read_meta

    base = tiny_config(
        **{
            "data.train_size": 64,
            "batch_size": BATCH,
            "val_interval": BATCH * 100,
            "budget_samples": BATCH * 120,
        }
    )
    spec = {"name": "ray-stop", "base": base, "methods": ["sparling"], "seeds": [0, 1]}
    sweep = build_sweep(spec)
    first, second = sweep.runs
    run_dir = work / "runs" / first.key
    signalled: list[int] = []

    def stop_when_training() -> None:
        """SIGTERM to this process (the sweep's driver) once the first run's worker
        reports a record past 8 steps (its own sample count: it writes one a second)."""
        seen: dict[str, Any] = {}
        until = time.monotonic() + 300
        while time.monotonic() < until:
            info = _progress(run_dir)
            if info != seen and info.get("samples", 0) >= BATCH * 8:
                signalled.append(int(info["samples"]))
                os.kill(os.getpid(), signal.SIGTERM)
                return
            seen = info
            time.sleep(0.005)

    poller = threading.Thread(target=stop_when_training, daemon=True)
    poller.start()
    summary = run_sweep(sweep, work, progress=True)
    poller.join(timeout=5)
    captured = capsys.readouterr()
    shown = captured.out + captured.err  # the bars on stderr, the lines above them on stdout
    assert signalled, "the run never trained 8 steps"

    # the first run wrote its checkpoint within a few steps of the signal, the second
    # never started; both stopped, neither failed
    # (the driver hears of the signal within half a second, the worker looks for the
    # request every quarter second: 2 to 18 steps here, at 20-40 ms a step), long before
    # the first validation, whose checkpoint would be all a run killed instead had
    at = read_meta(run_dir / "checkpoints" / "last")["samples"]
    print(f"signalled at sample {signalled[0]}, checkpoint at {at}")
    assert signalled[0] <= at <= signalled[0] + 40 * BATCH < BATCH * 100, (signalled, at)
    outcomes = {o.key: o for o in summary.outcomes}
    assert outcomes[first.key].status == "stopped", outcomes
    assert outcomes[first.key].reason == (
        f"stopped on SIGTERM at sample {at}; resumes from there when run again"
    )
    assert outcomes[second.key].status == "stopped", outcomes
    assert outcomes[second.key].reason == "not started: the sweep was asked to stop (SIGTERM)"
    assert not summary.failed and "2 stopped" in summary.table()
    # the live display says so, run by run
    assert f"stopped: {first.name} stopped on SIGTERM at sample {at}" in shown, shown[-3000:]
    assert "failed:" not in shown
    assert not (run_dir / "result.json").exists()
    assert not (run_dir / "stop-request.json").exists()  # answered, taken back
    assert not (work / "runs" / second.key / "checkpoints").exists()

    stopped = _mlflow_runs(work, "ray-stop")
    assert stopped["parent"].info.status == "KILLED"
    for key in (first.key, second.key):
        assert stopped[key].info.status == "KILLED", key
        assert "sparling.failure" not in stopped[key].data.tags

    # run again (its first seed: one Ray Train job is enough here): the stopped run
    # resumes at the step after its checkpoint and finishes
    firsts: list[int] = []
    done = threading.Event()

    def first_record() -> None:
        old_pid = _progress(run_dir).get("pid")
        while not done.is_set():
            info = _progress(run_dir)
            if info.get("pid") not in (None, old_pid) and "samples" in info:
                firsts.append(int(info["samples"]))
                return
            time.sleep(0.005)

    narrowed = build_sweep(spec, overrides=SweepOverrides(seeds=[0]))  # --seeds 0
    assert [r.key for r in narrowed.runs] == [first.key]
    watcher = threading.Thread(target=first_record, daemon=True)
    watcher.start()
    try:
        again = run_sweep(narrowed, work, progress=False)
    finally:
        done.set()
        watcher.join(timeout=5)
    assert [o.status for o in again.outcomes] == ["finished"], again.outcomes
    assert firsts == [at + BATCH]
    assert json.loads((run_dir / "result.json").read_text())["samples"] == BATCH * 120
    resumed = _mlflow_runs(work, "ray-stop")
    assert len(resumed) == 3  # the same children, not new ones
    assert resumed[first.key].info.run_id == stopped[first.key].info.run_id
    assert resumed[first.key].info.status == "FINISHED"
    assert resumed[second.key].info.status == "KILLED"  # still to run
    # and so the sweep is not finished: its parent stays KILLED, 2 runs expected
    assert resumed["parent"].info.status == "KILLED"
    assert resumed["parent"].data.tags["sparling.expected_runs"] == "2"
