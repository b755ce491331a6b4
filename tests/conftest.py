"""Shared test helpers: small configs and samples, and one seeding fixture."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

#: Marks a test that starts a multi-node Ray cluster of its own (`ray start` nodes, the
#: fake autoscaling cluster). In parallel runs (pytest-xdist, scripts/test.sh) these run
#: one after another in one test process (``--dist loadgroup``), so that no two clusters
#: of several raylets each compete for the CPUs at once; the other tests go on beside them.
OWN_CLUSTER = pytest.mark.xdist_group("cluster")

#: a model small enough to train a few steps in well under a second
TINY_MODEL: dict[str, Any] = {
    "d_model": 32,
    "ff": 64,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "heads": 2,
    "width": 8,
    "cr": 2,
}


def tiny_config(**updates: Any) -> dict[str, Any]:
    """A run config dict for a tiny DigitCircle model; ``updates`` use dotted paths."""
    from sparling.config import set_path

    cfg: dict[str, Any] = {
        "domain": {"name": "digit-circle"},
        "data": {"train_size": 32, "val_size": 8, "test_size": 8, "shards": 2},
        "model": {"preset": "fast", "overrides": dict(TINY_MODEL)},
        "bottleneck": {"name": "sparling"},
        "optim": {"lr": 3e-3},
        "schedule": {},
        "compute": {},
        "batch_size": 8,
        "val_interval": 16,
        "budget_samples": 48,
        "max_output_len": 8,
    }
    for path, value in updates.items():
        set_path(cfg, path, value)
    return cfg


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a `sparling` subprocess in a test: one BLAS thread per process
    (2 cores), no Ray usage reporting, plus ``extra``."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", **extra}


def run_python(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` from the repository root, in :func:`subprocess_env`, output captured;
    e.g. ``run_python("-m", "pipelines.cli", "sweep", ...)``."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_sweep_cli(
    path: Path, work: Path, *extra: str, timeout: float = 900, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run `sparling sweep` to the end in a subprocess (output captured as text)."""
    return subprocess.run(
        sweep_command(path, work, *extra),
        cwd=REPO,
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def progress_samples(work: Path) -> list[int]:
    """Samples each run of a sweep in ``work`` has trained, from its ``progress.json``."""
    out = []
    for p in (work / "runs").glob("*/progress.json"):
        try:
            out.append(int(json.loads(p.read_text()).get("samples", 0)))
        except (OSError, ValueError):
            continue
    return out


def sweep_command(path: Path, work: Path, *extra: str) -> list[str]:
    """`sparling sweep PATH --work-dir WORK --quiet [extra...]` as a subprocess command."""
    return [
        sys.executable,
        "-m",
        "pipelines.cli",
        "sweep",
        str(path),
        "--work-dir",
        str(work),
        "--quiet",
        *extra,
    ]


@contextlib.contextmanager
def local_ray(num_cpus: int) -> Iterator[None]:
    """A fresh local Ray instance of ``num_cpus`` CPUs for the ``with`` block (one left
    running by an earlier test is shut down first)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """``folder`` read-only for the ``with`` block: a read-only bind mount onto itself, a
    real EROFS that stops root too (permission bits do not). Skips the test where mounting
    is not permitted (CI runs as root on a machine that allows it)."""
    bind = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if bind.returncode != 0:
        pytest.skip(f"cannot bind-mount here ({bind.stderr.decode().strip()}): needs root")
    try:
        ro = subprocess.run(
            ["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True, text=True
        )
        if ro.returncode != 0:
            pytest.skip(f"cannot remount read-only here ({ro.stderr.strip()})")
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """In parallel runs (``--dist loadgroup``), the tests of a module that share a
    module-scoped fixture of that module (a trained run, a local Ray, an MLflow store) run
    in one process, one after another, so that it is built once, as in a run in one
    process; the other tests go to whichever process is free."""
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        module = item.nodeid.split("::")[0]
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info is not None else ()
        if any(d.scope == "module" and d.baseid == module for ds in defs for d in ds):
            item.add_marker(pytest.mark.xdist_group(module))


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    from sparling.seeding import set_seed

    set_seed(0)
