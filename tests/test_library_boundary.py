"""The library (``sparling``) is plain PyTorch: using it loads neither Ray nor MLflow."""

from __future__ import annotations

from conftest import run_python

CODE = """
import sys
import sparling
from sparling import domains, export, showcase, train, evaluate, runs, datasets, fitting
from sparling.models import build_model
build_model("digit-circle", "fast")
sparling.fit, sparling.RunFolder
loaded = sorted(m for m in ("ray", "mlflow") if m in sys.modules)
print(",".join(loaded) or "none")
"""


def test_importing_the_library_loads_neither_ray_nor_mlflow() -> None:
    done = run_python("-c", CODE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "none"


def test_the_check_can_fail() -> None:
    done = run_python("-c", "import mlflow, sys; print('mlflow' in sys.modules)")
    assert done.stdout.strip() == "True"
