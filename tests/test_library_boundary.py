"""The library (``sparling``) is plain PyTorch: using it loads neither Ray nor MLflow."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO, subprocess_env

CODE = """
import sys
import sparling
from sparling import domains, export, showcase, train, evaluate
from sparling.models import build_model
build_model("digit-circle", "fast")
loaded = sorted(m for m in ("ray", "mlflow") if m in sys.modules)
print(",".join(loaded) or "none")
"""


def test_importing_the_library_loads_neither_ray_nor_mlflow() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CODE],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "none"


def test_the_check_can_fail() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import mlflow, sys; print('mlflow' in sys.modules)"],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.stdout.strip() == "True"
