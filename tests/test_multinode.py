"""A local multi-node Ray cluster (a head and a second node started with `ray start` on
loopback) runs a small sweep, and its runs land on both nodes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import REPO, free_port, subprocess_env, sweep_command, tiny_config

pytestmark = pytest.mark.integration

RAY = Path(sys.executable).with_name("ray")


@pytest.fixture
def two_node_cluster(tmp_path: Path) -> Iterator[str]:
    # A short temp dir of its own: Ray's socket paths must stay under 108 characters, and
    # teardown kills only the processes of this cluster (never another Ray on the machine).
    temp = Path("/tmp") / f"rmn{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    subprocess.run(
        [
            str(RAY),
            "start",
            "--head",
            f"--port={port}",
            "--include-dashboard=false",
            f"--temp-dir={temp}",
            *common,
        ],
        env=subprocess_env(RAY_AUTH_MODE="disabled"),
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        subprocess.run(
            [str(RAY), "start", f"--address={address}", *common],
            env=subprocess_env(RAY_AUTH_MODE="disabled"),
            check=True,
            capture_output=True,
            timeout=120,
        )
        yield address
    finally:
        out = subprocess.run(["pgrep", "-f", str(temp)], capture_output=True, text=True)
        pids = [int(p) for p in out.stdout.split()]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(2)
        shutil.rmtree(temp, ignore_errors=True)


def test_sweep_runs_land_on_both_nodes(two_node_cluster: str, tmp_path: Path) -> None:
    sweep = {"name": "multinode", "base": tiny_config(), "methods": ["sparling"], "seeds": [0, 1]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep))
    work = tmp_path / "work"
    done = subprocess.run(
        sweep_command(path, work, "--no-tracking"),
        cwd=REPO,
        env=subprocess_env(RAY_AUTH_MODE="disabled", RAY_ADDRESS=two_node_cluster),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in (work / "runs").glob("*/result.json")]
    assert len(results) == 2 and all(r["samples"] == 48 for r in results)
    # each node has one CPU and each run's worker needs one: the runs ran side by side,
    # one on each node
    assert len({r["node_id"] for r in results}) == 2, results
