"""``sparling sweep --executor local``: a sweep's runs on one machine without Ray, with or
without MLflow (a GPU box with only PyTorch), then logged and reported like any sweep."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, run_python, subprocess_env, tiny_config

from pipelines.plan import build_sweep
from sparling.checkpoint import read_meta
from sparling.runs import RunFolder

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def _served(work: Path) -> Iterator[None]:
    """The local MLflow server of ``work`` kept up for the block: the queries in it lease
    that one instead of each starting (and stopping) its own."""
    from pipelines.tracking.server import tracking_uri
    from pipelines.tracking.settings import load_settings

    with tracking_uri(load_settings(work)):
        yield


def _sweep_file(tmp_path: Path, name: str, **updates: Any) -> Path:
    sweep = {
        "name": name,
        "base": tiny_config(**{"budget_samples": 32, "val_interval": 16, **updates}),
        "methods": ["sparling", "l1"],
        "seeds": [0],
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def _sparling(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "pipelines.cli", *args, timeout=timeout)


def _children(work: Path, sweep: str) -> list[Any]:
    from mlflow import MlflowClient

    from pipelines.tracking.server import tracking_uri
    from pipelines.tracking.settings import load_settings

    settings = load_settings(work)
    with tracking_uri(settings) as uri:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(settings.experiment_for(sweep=sweep))
        assert exp is not None
        runs = [
            (r, sorted(m.step for m in client.get_metric_history(r.info.run_id, "val/exact_match")))
            for r in client.search_runs([exp.experiment_id])
            if r.data.tags.get("sparling.kind") == "run"
        ]
    return runs


def _metric_steps(work: Path, sweep: str, keys: tuple[str, ...]) -> list[dict[str, list[int]]]:
    """For each child run of the sweep, the steps at which each metric of ``keys`` has a
    point (a step twice if it was logged twice there)."""
    from mlflow import MlflowClient

    from pipelines.tracking.server import tracking_uri
    from pipelines.tracking.settings import load_settings

    settings = load_settings(work)
    with tracking_uri(settings) as uri:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(settings.experiment_for(sweep=sweep))
        assert exp is not None
        return [
            {k: sorted(m.step for m in client.get_metric_history(r.info.run_id, k)) for k in keys}
            for r in client.search_runs([exp.experiment_id])
            if r.data.tags.get("sparling.kind") == "run"
        ]


def test_without_mlflow_then_logged_and_reported_here(tmp_path: Path) -> None:
    path = _sweep_file(tmp_path, "box")
    box = tmp_path / "box-work"
    args = ["sweep", str(path), "--work-dir", str(box), "--executor", "local", "--no-tracking"]
    out = _sparling(*args, "--parallel", "2", "--pack", str(tmp_path / "runs"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 finished" in out.stdout

    runs = sorted((box / "runs").iterdir())
    assert len(runs) == 2
    for run in runs:
        result = json.loads((run / "result.json").read_text())
        assert result["samples"] == 32 and result["status"] == "budget-exhausted"
        ev = json.loads((run / "evaluation.json").read_text())
        assert 0.0 <= ev["test_e2ee"] <= 1.0 and ev["test_checkpoint_samples"] == 32
        assert ev["total_wall_seconds"] > 0 and "wall_seconds" not in ev
        spooled = [json.loads(line) for line in (run / "metrics.spool.jsonl").open()]
        assert {(p["k"], p["s"]) for p in spooled} >= {
            ("val/exact_match", 16),
            ("val/exact_match", 32),
        }
        history = json.loads((run / "history.json").read_text())
        assert [r["samples"] for r in history] == [16, 32]
        assert (run / "checkpoints" / "last").is_dir()

    # Packed without checkpoints; every run's files are there.
    parts = sorted(tmp_path.glob("runs-*.tgz"))
    assert parts
    names = [n for p in parts for n in tarfile.open(p).getnames()]
    assert not [n for n in names if "/checkpoints/" in n]
    assert {n.split("/")[1] for n in names} == {r.name for r in runs}

    # A second call finds them finished and trains nothing.
    again = _sparling(*args)
    assert again.returncode == 0 and "2 skipped" in again.stdout, again.stdout + again.stderr

    # Here: unpack into a fresh work dir; the sweep logs them to MLflow without training.
    work = tmp_path / "work"
    for p in parts:
        tarfile.open(p).extractall(work, filter="data")
    # one run without its spool: its history.json alone gives MLflow its validations
    next((work / "runs").iterdir()).joinpath("metrics.spool.jsonl").unlink()
    done = _sparling("sweep", str(path), "--work-dir", str(work), "--executor", "local")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 skipped" in done.stdout and "sparling" in done.stdout  # the report's table
    with _served(work):
        children = _children(work, "box")
        # one meaning per metric name: each validation's wall time at its step, the run's
        # total once, at the evaluated checkpoint's step (here the last validation's)
        walls = _metric_steps(work, "box", ("time/wall_seconds", "time/total_wall_seconds"))
    assert len(children) == 2
    for child, steps in children:
        assert child.info.status == "FINISHED"
        assert "test/e2ee" in child.data.metrics
        assert all("/" in k for k in child.data.metrics), sorted(child.data.metrics)
        assert steps == [16, 32]  # sent from the spool or read from history.json
    assert walls == [{"time/wall_seconds": [16, 32], "time/total_wall_seconds": [32]}] * 2


def _parent_status(work: Path, sweep: str) -> str:
    from mlflow import MlflowClient

    from pipelines.tracking.server import tracking_uri
    from pipelines.tracking.settings import load_settings

    settings = load_settings(work)
    with tracking_uri(settings) as uri:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(settings.experiment_for(sweep=sweep))
        assert exp is not None
        (parent,) = [
            r
            for r in client.search_runs([exp.experiment_id])
            if r.data.tags.get("sparling.kind") == "sweep"
        ]
    return str(parent.info.status)


def test_tracked_runs_stop_at_a_deadline_and_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # system metrics sampled every half second (mlflow.yaml's default is 10 s)
    settings = tmp_path / "mlflow.yaml"
    settings.write_text("logging: {system_metrics_interval: 0.5}\n")
    monkeypatch.setenv("SPARLING_MLFLOW_CONFIG", str(settings))
    # Enough samples that the 1-second deadline stops the runs before they end (and that
    # train/ metrics are logged a few times).
    budget = 1200
    path = _sweep_file(tmp_path, "deadline", budget_samples=budget, val_interval=16)
    work = tmp_path / "work"
    args = ["sweep", str(path), "--work-dir", str(work), "--executor", "local"]
    args += ["--parallel", "2", "--no-report"]
    first = _sparling(*args, "--deadline", "1")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "2 stopped" in first.stdout
    with _served(work):
        stopped = {r.info.status for r, _ in _children(work, "deadline")}
        assert stopped <= {"KILLED", "RUNNING"}
        assert _parent_status(work, "deadline") == "KILLED"  # not FINISHED: runs are left
    # Run again without a deadline: each run resumes from its last checkpoint and ends.
    second = _sparling(*args, timeout=900)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "2 finished" in second.stdout
    with _served(work):
        children = _children(work, "deadline")
        train = _metric_steps(work, "deadline", ("train/loss", "train/lr", "train/grad_norm"))
        parent = _parent_status(work, "deadline")
    assert len(children) == 2  # the same children, not new ones
    for child, steps in children:
        assert child.info.status == "FINISHED"
        assert steps == list(range(16, budget + 1, 16))  # every validation, once
        # MLflow's system metrics of the training process, on by default
        system = {k for k in child.data.metrics if k.startswith("system/")}
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= (
            system
        )
    # every 50th optimizer step (mlflow.yaml's default) of 8 samples, across the stop
    for run in train:
        assert run["train/lr"] == run["train/grad_norm"] == list(range(400, budget + 1, 400))
        assert run["train/loss"] == list(range(16, budget + 1, 16))  # at validations too, once
    assert parent == "FINISHED"


def test_a_run_resumed_elsewhere_keeps_its_whole_history(tmp_path: Path) -> None:
    """A run folder copied to another machine (its checkpoint and history.json, not its
    MLflow store or its emptied spool) resumes there with every validation in MLflow."""
    import os
    import shutil
    import signal
    import time

    budget = 1200  # many validations after the stop (at the third)
    path = _sweep_file(tmp_path, "moved", budget_samples=budget, val_interval=16)
    path.write_text(path.read_text().replace("- l1\n", ""))  # one run is enough here
    here = tmp_path / "here"
    args = ["sweep", str(path), "--executor", "local", "--no-report"]
    driver = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", *args, "--work-dir", str(here)],
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:  # stop everything once the run has made a few validations
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            histories = list(here.glob("runs/*/history.json"))
            if histories and len(json.loads(histories[0].read_text() or "[]")) >= 3:
                break
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    there = tmp_path / "there"
    shutil.copytree(here / "runs", there / "runs")
    (run,) = (there / "runs").iterdir()
    (run / "metrics.spool.jsonl").unlink(missing_ok=True)
    (run / "train.lock").unlink(missing_ok=True)
    assert len(json.loads((run / "history.json").read_text())) >= 3
    second = _sparling(*args, "--work-dir", str(there), timeout=900)
    assert second.returncode == 0 and "1 finished" in second.stdout, second.stdout + second.stderr
    ((child, steps),) = _children(there, "moved")
    assert child.info.status == "FINISHED"
    assert steps == list(range(16, budget + 1, 16))


def _progress(work: Path) -> dict[str, Any]:
    found = list(work.glob("runs/*/progress.json"))
    try:
        info: dict[str, Any] = json.loads(found[0].read_text()) if found else {}
    except json.JSONDecodeError:
        return {}
    return info


def test_the_deadline_and_a_sigterm_to_the_driver_stop_a_run_at_its_step(
    tmp_path: Path,
) -> None:
    """A run whose first validation is 500 steps away: the deadline stops it with its
    checkpoint at the step it was on (the old deadline ended the process and kept only
    the checkpoint of its last validation: none), reported stopped; run again, it resumes
    at the next step, and a real SIGTERM to the sweep's driver stops it the same way.
    (That a resumed run ends as one never stopped is the library's, checked in
    tests/sparling/test_stopping.py; a local run resumed after its deadline in
    test_tracked_runs_stop_at_a_deadline_and_resume.)"""
    import signal
    import time

    batch = 16  # 20-40 ms a step here: the deadline falls well before the validation
    updates = {"data.train_size": 64, "batch_size": batch, "val_interval": batch * 500}
    sweep = {
        "name": "stops",
        "base": tiny_config(**{**updates, "budget_samples": batch * 1000}),
        "methods": ["sparling"],
    }
    path = tmp_path / "stops.yaml"
    path.write_text(yaml.safe_dump(sweep))
    work = tmp_path / "work"
    command = [sys.executable, "-m", "pipelines.cli", "sweep", str(path), "--work-dir"]
    command += [str(work), "--executor", "local", "--no-tracking", "--no-report"]

    # A deadline that falls before the run process has started training (the machine
    # busy: before it has even made its run folder) stops it with nothing to keep: again,
    # with a later one.
    for deadline in (10, 20, 40):
        first = _sparling(*command[3:], "--deadline", str(deadline))
        assert first.returncode == 0, first.stdout + first.stderr
        assert "1 stopped" in first.stdout
        kept = list(work.glob("runs/*/checkpoints/last"))
        if kept:
            break
    assert kept, "no deadline fell after the run had started training"
    (run,) = (work / "runs").iterdir()
    at_deadline = read_meta(run / "checkpoints" / "last")["samples"]
    assert f"stopped at the deadline at sample {at_deadline}" in first.stdout, first.stdout
    assert batch <= at_deadline < batch * 500
    assert _progress(work)["state"] == "stopped"

    def resumed_at(proc: subprocess.Popen[str], until: int) -> tuple[int, int]:
        """The first sample count the new run process reports, and the count at which the
        driver ``proc`` was sent SIGTERM: the moment a record past ``until`` appeared (the
        run process writes one each second, the sample count then its own)."""
        old_pid = _progress(work).get("pid")
        firsts: list[int] = []
        seen: dict[str, Any] = {}
        while proc.poll() is None:
            info = _progress(work)
            if info.get("pid") not in (None, old_pid) and "samples" in info:
                firsts.append(int(info["samples"]))
                if info != seen and info["samples"] >= until:
                    proc.send_signal(signal.SIGTERM)
                    return firsts[0], int(info["samples"])
                seen = info
            time.sleep(0.005)
        raise AssertionError(f"the run never got past sample {until}: {firsts}")

    second = subprocess.Popen(
        command, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        start, signalled_at = resumed_at(second, at_deadline + 4 * batch)
        out = second.communicate(timeout=300)[0]
    finally:
        if second.poll() is None:
            second.kill()
    assert start == at_deadline + batch  # resumed at the step after the deadline's
    assert second.returncode == 0 and "1 stopped" in out, out
    at_driver = read_meta(run / "checkpoints" / "last")["samples"]
    assert f"stopped on SIGTERM at sample {at_driver}" in out, out
    assert signalled_at <= at_driver <= signalled_at + 4 * batch, (signalled_at, at_driver)


def test_datasets_generated_here_report_each_shard(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Off a terminal (a log file), the local executor's dataset generation prints a line
    per shard as it is written, so a long dataset is never silent."""
    import multiprocessing as mp

    from pipelines.executors.local import local_generator
    from sparling.shards import read_manifest

    with mp.get_context("spawn").Pool(2) as pool:
        out = local_generator(pool)("digit-circle", {}, "val", 0, 8, 4, tmp_path / "val")
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if " shards in " in line]
    assert [line.split(": ")[1].split(" ")[0] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    manifest = read_manifest(out)
    assert manifest is not None and manifest.complete


def test_a_stop_during_dataset_generation_ends_it_at_once(tmp_path: Path) -> None:
    """A stop request (or the deadline) while the shards are written ends generation
    within a poll, not after the dataset: the pool is left to terminate, no manifest is
    written (the next run writes the dataset again whole), and the sweep's runs are
    reported stopped, never started."""
    import multiprocessing as mp
    import time

    from pipelines.executors.local import GenerationStopped, local_generator, run_local
    from pipelines.plan import build_sweep
    from sparling.shards import read_manifest

    calls: list[float] = []

    def stop_after_a_second() -> str | None:
        calls.append(time.monotonic())
        return "on SIGTERM" if calls[-1] - calls[0] > 1.0 else None

    out = tmp_path / "train"
    start = time.monotonic()
    with mp.get_context("spawn").Pool(1) as pool:
        with pytest.raises(GenerationStopped, match="on SIGTERM"):
            local_generator(pool, stop_after_a_second)(
                "digit-circle", {}, "train", 0, 200_000, 2, out
            )
    assert time.monotonic() - start < 30  # 200,000 images take minutes
    assert read_manifest(out) is None

    sweep = build_sweep(
        {
            "name": "gen-stop",
            "base": tiny_config(**{"data.train_size": 200_000}),
            "methods": ["sparling"],
            "seeds": [0, 1],
        },
        source="test",
        base_dir=tmp_path,
    )
    start = time.monotonic()
    outcome = run_local(sweep.runs, tmp_path / "work", None, deadline=1.0, progress=False)
    assert time.monotonic() - start < 30
    assert {run.key for run in sweep.runs} == set(outcome)
    for status, reason in outcome.values():
        assert status == "stopped"
        assert "not started" in reason and "at the deadline" in reason


def test_a_retrained_run_whose_source_finished_earlier_trains(tmp_path: Path) -> None:
    """A Retrained run whose Sparling source finished in an earlier sweep (this sweep skips
    it as already finished) takes its g and trains; it used to be reported failed
    (``whose g it retrains, skipped``) without starting."""
    sweep = {
        "name": "retrain-later",
        "base": tiny_config(**{"budget_samples": 32, "val_interval": 16}),
        "methods": [
            "sparling",
            # a nominal density of its own, which it never applies
            {"name": "retrained", "from": "sparling", "set": {"schedule.initial_density": 0.25}},
        ],
        "seeds": [0],
    }
    path = tmp_path / "retrain-later.yaml"
    path.write_text(yaml.safe_dump(sweep))
    work = tmp_path / "work"
    local = ["--executor", "local", "--no-tracking", "--no-report", "--quiet"]
    first = _sparling("sweep", str(path), "--work-dir", str(work), "--methods", "sparling", *local)
    assert first.returncode == 0, first.stdout + first.stderr
    second = _sparling("sweep", str(path), "--work-dir", str(work), *local)
    assert second.returncode == 0, second.stdout + second.stderr
    summary = second.stdout + second.stderr
    assert "1 finished, 1 skipped" in summary, summary
    assert "whose g it retrains" not in summary, summary
    finished = [json.loads(p.read_text()) for p in work.glob("runs/*/result.json")]
    assert len(finished) == 2
    # the Retrained run is tested at the density of the checkpoint its g came from, not
    # at its own schedule's nominal one (which it never applies)
    source, retrained = (RunFolder.for_config(r.config, work) for r in build_sweep(sweep).runs)
    g_density = read_meta(source.select_checkpoint())["density"]
    own_density = read_meta(retrained.select_checkpoint())["density"]
    assert own_density < g_density
    evaluation = retrained.read_evaluation()
    assert evaluation is not None and evaluation["test_checkpoint_density"] == g_density
    assert evaluation["test_reached_reported"] == float(g_density <= 5e-5)

    # its evaluation deleted (to score it again): the sweep evaluates it, trains nothing,
    # and keeps its training record as it was
    record = retrained.result_path.read_bytes()
    retrained.evaluation_path.unlink()
    plan = _sparling("sweep", str(path), "--work-dir", str(work), "--dry-run", *local)
    assert "retrained seed=0  trained, to evaluate" in plan.stdout, plan.stdout
    third = _sparling("sweep", str(path), "--work-dir", str(work), *local)
    assert third.returncode == 0, third.stdout + third.stderr
    assert retrained.read_evaluation() == evaluation
    assert retrained.result_path.read_bytes() == record

    # no trainer is built for such a run: its training and validation data are not opened
    from pipelines.executors.local import train_and_evaluate
    from sparling.datasets import prepare_datasets

    (run,) = [r for r in build_sweep(sweep).runs if r.method == "retrained"]
    test_dir = prepare_datasets(run.config, work, progress=False, splits=("test",))["test"]
    retrained.evaluation_path.unlink()
    missing = str(tmp_path / "no-such-dataset")
    train_and_evaluate(
        {
            "name": run.name,
            "method": run.method,
            "config": run.config.model_dump(mode="json"),
            "run_dir": str(retrained.path),
            "work_dir": str(work),
            "train": missing,
            "val": missing,
            "test": str(test_dir),
            "threads": 1,
            "device": "cpu",
            "tracking": None,
        }
    )
    assert retrained.read_evaluation() == evaluation
    assert retrained.result_path.read_bytes() == record


def test_a_larger_budget_continues_the_finished_shorter_run_with_its_history(
    tmp_path: Path,
) -> None:
    """A sweep whose budget grows (the same runs otherwise) trains on from where the
    shorter runs ended, and MLflow has every validation of the longer run."""
    work = tmp_path / "work"
    args = ["--executor", "local", "--no-report", "--work-dir", str(work)]
    for name, budget in (("short", 32), ("longer", 64)):
        path = _sweep_file(tmp_path, name, budget_samples=budget)
        path.write_text(path.read_text().replace("- l1\n", ""))
        if name == "longer":  # the plan says where the run will start
            short_id = next((work / "runs").iterdir()).name
            plan = _sparling("sweep", str(path), *args, "--dry-run")
            assert f"to run, continuing {short_id} from sample 32" in plan.stdout, plan.stdout
        done = _sparling("sweep", str(path), *args)
        assert done.returncode == 0 and "1 finished" in done.stdout, done.stdout + done.stderr
    assert "continues run" in done.stdout and "from its checkpoint at sample 32" in done.stdout
    ((child, steps),) = _children(work, "longer")
    assert child.info.status == "FINISHED"
    assert steps == [16, 32, 48, 64]


def test_a_retrained_run_starts_once_its_source_finishes_not_after_every_run_before_it(
    tmp_path: Path,
) -> None:
    """Two slots: a run far too long to finish here beside a short one, whose Retrained run
    starts as soon as the short one has finished, while the long one still trains (the
    long one is then stopped); and the Retrained run of a source that failed never
    starts."""
    import threading

    from pipelines.executors.local import run_local
    from sparling.stopping import StopRequest

    missing = "run:0123456789abcdef"  # a source run that cannot start: it fails
    sweep = build_sweep(
        {
            "name": "retrain-early",
            "base": tiny_config(**{"budget_samples": 32, "val_interval": 16}),
            "methods": [
                {
                    "name": "sparling",
                    "label": "long",
                    "seeds": [0],
                    "set": {"budget_samples": 10**7},
                },
                {"name": "sparling", "seeds": [1]},
                {
                    "name": "sparling",
                    "label": "broken",
                    "seeds": [2],
                    "set": {"init_from": missing},
                },
                # after the broken one, which fails at once, in the order
                {"name": "retrained", "from": "sparling", "seeds": [1]},
                {"name": "retrained", "label": "after-broken", "from": "broken", "seeds": [2]},
            ],
        },
        source="test",
        base_dir=tmp_path,
    )
    runs = {r.name.split()[0]: r for r in sweep.runs}
    assert sorted(runs) == ["after-broken", "broken", "long", "retrained", "sparling"], runs
    work = tmp_path / "work"
    retrained = RunFolder.for_config(runs["retrained"].config, work)
    stop = StopRequest()

    def stop_once_retrained() -> None:  # or after 10 minutes, when it never started
        deadline = time.monotonic() + 600
        while not retrained.evaluation_path.is_file() and time.monotonic() < deadline:
            time.sleep(0.5)
        stop.set("the test")

    watcher = threading.Thread(target=stop_once_retrained, daemon=True)
    watcher.start()
    outcome = run_local(sweep.runs, work, None, parallel=2, progress=False, stop=stop)
    # trained and evaluated (the stop may reach it as it exits) while the long one trained
    assert retrained.evaluation_path.is_file() and retrained.read_result() is not None, outcome
    assert outcome[runs["long"].key][0] == "stopped", outcome
    status, reason = outcome[runs["after-broken"].key]
    assert status == "failed" and "whose g it retrains, failed" in reason
    assert not RunFolder.for_config(runs["after-broken"].config, work).path.exists()
