"""An MLflow tracking server backed by a real PostgreSQL server receives a sweep's runs
from concurrent Ray Train jobs, with nothing lost (every metric point counted)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import REPO, free_port, subprocess_env, sweep_command, tiny_config

pytestmark = pytest.mark.integration

PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb and the server refuse to run as root; CI runs as root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture
def postgres() -> Iterator[str]:
    if not PG_BIN:
        pytest.skip(
            "PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run does it)"
        )
    pytest.importorskip("psycopg", reason="the psycopg driver (dev extra) is not installed")
    bin_dir = Path(PG_BIN[-1])
    data = Path(tempfile.mkdtemp(prefix="sparling-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    port = free_port()
    run = {"check": True, "capture_output": True, "timeout": 120}
    subprocess.run(
        _as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]),
        **run,
    )  # type: ignore[call-overload]
    opts = f"-h 127.0.0.1 -p {port} -k {data}"  # loopback only; the socket in its own folder
    subprocess.run(
        _as_postgres(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                opts,
                "-l",
                str(data / "log"),
                "-w",
                "start",
            ]
        ),
        **run,
    )  # type: ignore[call-overload]
    try:
        subprocess.run(
            _as_postgres(
                [
                    str(bin_dir / "createdb"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-U",
                    "postgres",
                    "mlflow",
                ]
            ),
            **run,
        )  # type: ignore[call-overload]
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(
            _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(data, ignore_errors=True)


def test_sweep_logs_to_a_postgres_backed_server(postgres: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from pipelines.tracking.server import LocalTrackingServer

    server = LocalTrackingServer(postgres, tmp_path / "artifacts", tmp_path / "state")
    uri = server.start()
    try:
        sweep = {
            "name": "pg",
            "base": tiny_config(),
            "methods": ["sparling", "non-sparse"],
            "seeds": [0, 1],
        }
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump(sweep))
        env = subprocess_env(SPARLING_MLFLOW_PROFILE="server", MLFLOW_TRACKING_URI=uri)
        done = subprocess.run(
            sweep_command(path, tmp_path / "work"),
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("sparling-pg")
        assert exp is not None
        runs = [
            r
            for r in client.search_runs([exp.experiment_id])
            if r.data.tags.get("sparling.kind") == "run"
        ]
        assert len(runs) == 4 and len({r.data.tags["sparling.run_id"] for r in runs}) == 4
        for r in runs:
            assert r.info.status == "FINISHED"
            # 48 samples validated every 16: three points per metric, none lost, none doubled
            for key in ("train/loss", "val/exact_match", "schedule/density", "val/e2ee"):
                steps = [m.step for m in client.get_metric_history(r.info.run_id, key)]
                assert steps == [16, 32, 48], (key, steps)
            assert {"test/fpe", "test/fne", "test/ce", "test/e2ee"} <= set(r.data.metrics)
    finally:
        server.stop(force=True)
