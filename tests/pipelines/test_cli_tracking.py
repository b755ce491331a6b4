"""What the commands track and where: the MLflow settings file each one finds (and says it
found), from whatever folder it runs in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO, subprocess_env, tiny_config


def _sparling_in(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``sparling ARGS`` run from the folder ``cwd`` (the project importable from anywhere)."""
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=cwd,
        env=subprocess_env(PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_dry_runs_name_the_settings_file_found_beside_the_work_dir(tmp_path: Path) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    work = project / "sparling-work"
    project.mkdir()
    elsewhere.mkdir()
    (project / "mlflow.yaml").write_text("experiment_name: team-{sweep}\n")
    config = project / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_config()))
    sweep = project / "s.yaml"
    sweep.write_text(yaml.safe_dump({"name": "s", "base": "run.yaml", "methods": ["sparling"]}))

    out = _sparling_in(elsewhere, "sweep", str(sweep), "--dry-run", "--work-dir", str(work))
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith(f"MLflow: settings {project / 'mlflow.yaml'} (next to the work dir)")
    assert f"store sqlite:///{work}/mlflow/mlflow.db" in line
    assert "experiment 'team-s'" in line

    out = _sparling_in(elsewhere, "train", str(config), "--dry-run", "--work-dir", str(work))
    assert out.returncode == 0, out.stderr
    assert "  to train: " in out.stdout and "experiment 'team'" in out.stdout
    assert "(next to the work dir)" in out.stdout

    # a settings file in the current folder is not silently passed over
    (elsewhere / "mlflow.yaml").write_text("experiment_name: mine-{sweep}\n")
    out = _sparling_in(elsewhere, "sweep", str(sweep), "--dry-run", "--work-dir", str(work))
    assert f"also found, not used: {elsewhere / 'mlflow.yaml'}" in out.stdout
    named = ["--mlflow-config", str(elsewhere / "mlflow.yaml")]
    out = _sparling_in(elsewhere, "sweep", str(sweep), "--dry-run", "--work-dir", str(work), *named)
    assert "(--mlflow-config)" in out.stdout and "experiment 'mine-s'" in out.stdout
    assert not work.exists()  # a dry run writes nothing
