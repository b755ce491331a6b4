"""What the commands track and where: the MLflow settings file each one finds (and says it
found), from whatever folder it runs in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, subprocess_env, tiny_config
from mlflow import MlflowClient


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


def _mlflow_runs(uri: str) -> list[dict[str, Any]]:
    """Every run of every experiment at ``uri``: the run, its experiment's name, the steps
    of its ``val/exact_match`` points and its ``evaluation/last`` artifacts."""
    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return [
        {
            "run": r,
            "experiment": client.get_experiment(r.info.experiment_id).name,
            "val_steps": sorted(
                m.step for m in client.get_metric_history(r.info.run_id, "val/exact_match")
            ),
            "artifacts": sorted(
                a.path for a in client.list_artifacts(r.info.run_id, "evaluation/last")
            ),
        }
        for r in client.search_runs(ids, max_results=1000)
        if r.data.tags.get("sparling.kind") == "run"
    ]


def _logged_models(uri: str, run_id: str) -> list[Any]:
    """The logged models whose source is MLflow run ``run_id``."""
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    return list(
        client.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
        )
    )


@pytest.mark.integration
def test_a_run_trained_alone_is_evaluated_into_its_mlflow_run_and_reused_by_a_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    import numpy as np
    from mlflow.entities import LoggedModelStatus

    import sparling
    from pipelines.plan import load_sweep
    from pipelines.tracking.server import tracking_uri
    from pipelines.tracking.settings import load_settings
    from sparling import domains
    from sparling.config import load_config

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_config(budget_samples=32, val_interval=16)))
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"name": "s", "base": "run.yaml", "methods": ["sparling"]}))
    key = load_config(config).run_id()
    assert [r.key for r in load_sweep(sweep).runs] == [key]  # the sweep plans that run
    work = tmp_path / "work"
    run_dir = work / "runs" / key

    # one local server for the whole test: each command reuses it (as the sweep's
    # processes do) instead of starting its own
    with tracking_uri(load_settings(work)) as uri:
        trained = _sparling_in(REPO, "train", str(config), "--work-dir", str(work), "--quiet")
        assert trained.returncode == 0, trained.stdout + trained.stderr
        assert "in experiment 'sparling'" in trained.stdout
        (alone,) = _mlflow_runs(uri)
        tags = alone["run"].data.tags
        assert alone["experiment"] == "sparling" and alone["run"].info.status == "FINISHED"
        assert tags["sparling.run_id"] == key and tags["sparling.kind"] == "run"
        assert tags["sparling.method"] == "sparling" and tags["sparling.seed"] == "0"
        assert tags["sparling.status"] == "finished" and "mlflow.parentRunId" not in tags
        assert alone["val_steps"] == [16, 32]
        assert alone["run"].data.params["budget_samples"] == "32"

        evaluated = _sparling_in(REPO, "evaluate", str(run_dir), "--samples", "4")
        assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
        alone_id = alone["run"].info.run_id
        assert f"MLflow: logged to run(s) {alone_id}" in evaluated.stdout
        (alone,) = _mlflow_runs(uri)
        evaluated_at = alone["run"].data.metrics
        # under eval/, at the checkpoint's step: test/ is the run's own full evaluation
        assert evaluated_at["eval/samples"] == 4 and "eval/ce" in evaluated_at
        assert not [k for k in evaluated_at if k.startswith("test/")]
        assert "evaluation/last/evaluation.json" in alone["artifacts"]

        last = run_dir / "checkpoints" / "last" / "state.pt"
        stamp = last.stat().st_mtime_ns
        swept = _sparling_in(
            REPO, "sweep", str(sweep), "--work-dir", str(work), "--executor", "local", "--no-report"
        )
        assert swept.returncode == 0, swept.stdout + swept.stderr
        assert last.stat().st_mtime_ns == stamp  # not trained again: evaluated only
        runs = {r["experiment"]: r for r in _mlflow_runs(uri)}
        assert sorted(runs) == ["sparling", "sparling-s"]
        child = runs["sparling-s"]
        # the sweep's child stands for the run trained alone: linked both ways
        assert child["run"].data.tags["sparling.trained_in"] == alone_id
        assert runs["sparling"]["run"].data.tags["sparling.sweep_runs"] == child["run"].info.run_id
        assert child["run"].info.status == "FINISHED" and "test/ce" in child["run"].data.metrics
        assert child["val_steps"] == [16, 32]  # its training's validations, once each

        # the finished sweep run's logged model: its evaluated checkpoint, exported
        child_id = child["run"].info.run_id
        (model,) = _logged_models(uri, child_id)
        assert model.status.to_int() == LoggedModelStatus.READY.to_int()
        assert model.source_run_id == child_id and model.model_type == "sparling"
        assert model.tags["sparling.run_id"] == key and model.tags["sparling.checkpoint"] == "last"
        assert model.params["budget_samples"] == "32"
        linked = {m.key: m for m in model.metrics}
        assert linked["test/ce"].value == child["run"].data.metrics["test/ce"]
        assert linked["test/ce"].step == 32 and linked["test/ce"].dataset_name.startswith(
            "digit-circle-test-"
        )
        # listed among the run's outputs (the run page's "Logged models")
        outputs = MlflowClient(uri).get_run(child_id).outputs.model_outputs
        assert [o.model_id for o in outputs] == [model.model_id]
        # loadable as MLflow users load models; it decodes as the exported file does
        out = tmp_path / "m.safetensors"
        exported = _sparling_in(REPO, "export", str(run_dir), "--out", str(out))
        assert exported.returncode == 0, exported.stdout + exported.stderr
        images = np.stack(
            [domains.make("digit-circle", split="test").sample(0, i).x for i in range(3)]
        ).astype(np.float32)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # where models:/ URIs resolve
        pyfunc = mlflow.pyfunc.load_model(f"models:/{model.model_id}")
        assert pyfunc.predict(images) == sparling.load_model(out).decode(images, max_len=8)

        # sparling export logs the file to the run's MLflow runs: the child has it already,
        # the run trained alone gets its own; exported again (over the file: --force),
        # nothing new
        assert f"{model.model_id} of run {child_id}" in exported.stdout
        (alone_model,) = _logged_models(uri, alone_id)
        assert alone_model.model_id != model.model_id
        refused = _sparling_in(REPO, "export", str(run_dir), "--out", str(out))
        assert refused.returncode == 2 and "already exists; pass --force" in refused.stderr
        again = _sparling_in(REPO, "export", str(run_dir), "--out", str(out), "--force")
        assert again.returncode == 0, again.stdout + again.stderr
        assert [m.model_id for m in _logged_models(uri, alone_id)] == [alone_model.model_id]
        assert len(_logged_models(uri, child_id)) == 1


@pytest.mark.integration
def test_runs_whose_code_changed_are_listed_reused_and_trained_again_on_request(
    tmp_path: Path,
) -> None:
    from pipelines.tracking.server import tracking_uri
    from pipelines.tracking.settings import load_settings
    from pipelines.tracking.tags import CODE_PATHS, git_commit

    sweep = tmp_path / "c.yaml"
    base = tiny_config(budget_samples=16, val_interval=16)
    sweep.write_text(yaml.safe_dump({"name": "c", "base": base, "seeds": [0, 1]}))
    work = tmp_path / "work"
    head = git_commit()
    root = subprocess.run(
        ["git", "-C", str(REPO), "rev-list", "--max-parents=0", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[0]
    # the code of now is HEAD's unless the work tree has uncommitted code changes
    clean = (
        subprocess.run(
            ["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", *CODE_PATHS]
        ).returncode
        == 0
    )
    args = ["sweep", str(sweep), "--work-dir", str(work), "--executor", "local", "--no-report"]

    with tracking_uri(load_settings(work)) as uri:
        client = MlflowClient(uri)
        first = _sparling_in(REPO, *args, "--parallel", "2")
        assert first.returncode == 0, first.stdout + first.stderr

        def children() -> dict[str, Any]:
            exp = client.get_experiment_by_name("sparling-c")
            runs = client.search_runs([exp.experiment_id], "tags.`sparling.kind` != 'sweep'")
            return {
                f"{r.data.tags['sparling.seed']}/{r.data.tags['sparling.kind']}": r for r in runs
            }

        trained = children()
        assert sorted(trained) == ["0/run", "1/run"]
        assert {r.data.tags["sparling.git_commit"] for r in trained.values()} == {head}
        # seed 0 was trained by the project's first commit, as far as MLflow knows
        client.set_tag(trained["0/run"].info.run_id, "sparling.git_commit", root)
        key0, key1 = (trained[f"{s}/run"].data.tags["sparling.run_id"] for s in (0, 1))
        stamps = {
            k: (work / "runs" / k / "checkpoints/last/state.pt").stat().st_mtime_ns
            for k in (key0, key1)
        }

        dry = _sparling_in(REPO, *args, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        (line0,) = [line for line in dry.stdout.splitlines() if line.strip().startswith(key0)]
        assert f"done, code changed since (since commit {root[:12]}: " in line0
        listed = line0.split(f"since commit {root[:12]}: ")[1].split(", ")
        assert listed[0].startswith(CODE_PATHS)  # the files that differ
        if clean:
            (line1,) = [line for line in dry.stdout.splitlines() if line.strip().startswith(key1)]
            assert line1.rstrip().endswith("  done")
            assert (
                "1 finished run(s) trained by code that has changed since are reused" in dry.stdout
            )

        # reused by default: nothing trained
        again = _sparling_in(REPO, *args)
        assert again.returncode == 0 and "2 skipped" in again.stdout, again.stdout + again.stderr
        for k, stamp in stamps.items():
            assert (work / "runs" / k / "checkpoints/last/state.pt").stat().st_mtime_ns == stamp

        rerun = _sparling_in(REPO, *args, "--rerun", "changed")
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert f"{key0}  sparling seed=0  to rerun: code changed (since commit" in rerun.stdout
        kept = work / "superseded" / f"{key0}-1"
        assert (kept / "result.json").is_file() and (kept / "checkpoints" / "last").is_dir()
        assert f"since commit {root[:12]}" in (kept / "superseded.txt").read_text()
        assert json.loads((work / "runs" / key0 / "result.json").read_text())["samples"] == 16
        if clean:  # seed 1's code has not changed: not trained again
            stamp = (work / "runs" / key1 / "checkpoints/last/state.pt").stat().st_mtime_ns
            assert stamp == stamps[key1]
        now = children()
        assert now["0/superseded"].info.run_id == trained["0/run"].info.run_id
        assert "since commit" in now["0/superseded"].data.tags["sparling.superseded"]
        assert now["0/run"].info.run_id != trained["0/run"].info.run_id
        assert now["0/run"].info.status == "FINISHED"
        assert now["0/run"].data.tags["sparling.git_commit"] == head
