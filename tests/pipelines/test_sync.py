"""Sync to MLflow without training: a sweep's parent and children as ``tracking_context``
makes them on a real local tracking server (started for a temporary work dir and stopped
at the end), read back through the server: the artifacts, downloaded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import tiny_config

from pipelines.plan import Sweep, load_sweep
from pipelines.sync import log_datasets, tracking_context
from pipelines.tracking.finder import Tracker
from pipelines.tracking.procs import server_healthy
from sparling.config import RunConfig

pytestmark = pytest.mark.integration

SWEEP = {
    "name": "synced",
    "base": tiny_config(),
    "methods": ["sparling", "l1"],
    "seeds": [0, 1],
    "axes": [{"field": "schedule.delta_update", "values": [0.75]}],
}


@dataclass
class Synced:
    sweep: Sweep
    path: Path
    work: Path
    parent: str
    children: dict[str, str]  # run key -> MLflow run id
    downloads: Path
    read: dict[str, Any]  # what was read back while the server ran


def _download(client: Any, run_id: str, path: str, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, path, str(dst)))


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synced]:
    from mlflow import MlflowClient

    tmp = tmp_path_factory.mktemp("sync")
    path = tmp / "synced.yaml"
    text = yaml.safe_dump(SWEEP) + "# a comment, kept: the file as given\n"
    path.write_text(text)
    sweep = load_sweep(path)
    work = tmp / "work"
    downloads = tmp / "downloads"
    read: dict[str, Any] = {}
    with tracking_context(sweep, work, list(sweep.runs)) as (tracking, parent):
        client = MlflowClient(tracking["uri"])
        read["uri"] = tracking["uri"]
        read["sweep_file"] = _download(client, parent, f"sweep/{path.name}", downloads / "p")
        read["plan"] = _download(client, parent, "sweep/plan.json", downloads / "p")
        read["configs"] = {
            key: _download(client, child, "config.json", downloads / key)
            for key, child in tracking["runs"].items()
        }
        # logging a run's datasets again adds nothing
        first = sweep.runs[0]
        log_datasets(Tracker(tracking["uri"]), tracking["runs"][first.key], first, work)
        read["runs"] = {key: client.get_run(child) for key, child in tracking["runs"].items()}
        read["parent"] = client.get_run(parent)
        children = dict(tracking["runs"])
    yield Synced(sweep, path, work, parent, children, downloads, read)


def test_the_server_is_stopped_afterwards(synced: Synced) -> None:
    assert not server_healthy(synced.read["uri"])


def test_the_parent_keeps_the_sweep_file_as_given_and_the_resolved_plan(synced: Synced) -> None:
    assert synced.read["sweep_file"].read_bytes() == synced.path.read_bytes()
    plan = json.loads(synced.read["plan"].read_text())
    assert plan["name"] == "synced" and plan["fingerprint"] == synced.sweep.fingerprint()
    assert plan["swept_fields"] == ["schedule.delta_update"]
    assert [r["key"] for r in plan["runs"]] == [r.key for r in synced.sweep.runs]
    for entry, run in zip(plan["runs"], synced.sweep.runs, strict=True):
        assert (entry["method"], entry["seed"], entry["swept"]) == (
            run.method,
            run.seed,
            {"schedule.delta_update": 0.75},
        )
        # the resolved config: the same run id
        assert RunConfig.model_validate(entry["config"]).run_id() == run.key


def test_the_parent_and_its_children_carry_mlflows_context_tags(synced: Synced) -> None:
    # what fills the UI's User, Source and Version columns, the parent's row included
    for run in [synced.read["parent"], *synced.read["runs"].values()]:
        tags = run.data.tags
        assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.source.name"] == f"sparling sweep {synced.path}"
        assert tags["sparling.git_commit"] == tags.get("mlflow.source.git.commit", "unknown")


def test_each_child_keeps_its_resolved_config(synced: Synced) -> None:
    for run in synced.sweep.runs:
        config = RunConfig.model_validate_json(synced.read["configs"][run.key].read_text())
        assert config.run_id() == run.key
        assert config.schedule.delta_update == 0.75 and config.seed == run.seed
        assert synced.read["configs"][run.key].read_text() == run.config.to_json()


def test_each_child_lists_its_datasets_by_name_and_digest(synced: Synced) -> None:
    from sparling.shards import plan_dataset

    data = SWEEP["base"]["data"]
    sizes = {"train": data["train_size"], "val": data["val_size"], "test": data["test_size"]}
    expected = {}
    for split, count in sizes.items():
        plan = plan_dataset("digit-circle", {}, split, 0, count, min(data["shards"], count))
        expected[split] = (f"digit-circle-{split}-{plan.dataset_hash[:12]}", plan)
    for run in synced.sweep.runs:
        inputs = synced.read["runs"][run.key].inputs.dataset_inputs
        assert len(inputs) == 3  # once each, though logged twice for the first run
        by_context = {
            {t.key: t.value for t in i.tags}["mlflow.data.context"]: i.dataset for i in inputs
        }
        assert set(by_context) == {"train", "val", "test"}
        for split, dataset in by_context.items():
            name, plan = expected[split]
            assert dataset.name == name  # the dataset's folder under the work dir
            assert dataset.digest == plan.dataset_hash[:12]
            source = json.loads(dataset.source)["uri"]
            folder = synced.work.resolve() / "data" / name
            assert source == (folder / "manifest.json").as_uri()
            profile = json.loads(dataset.profile)
            assert profile["num_rows"] == sizes[split] and profile["split"] == split
            assert profile["dataset_hash"] == plan.dataset_hash
    # the data's seed, not the run's: every run of the sweep reads the same datasets
    digests = {
        frozenset(i.dataset.digest for i in synced.read["runs"][r.key].inputs.dataset_inputs)
        for r in synced.sweep.runs
    }
    assert len(digests) == 1


def test_runs_frame_of_a_work_dir(synced: Synced, tmp_path: Path) -> None:
    from pipelines.report import runs_frame
    from sparling.errors import SparlingError

    df = runs_frame(str(synced.path), synced.work)  # the sweep's file: its name is read
    assert sorted(df["run_id"]) == sorted(r.key for r in synced.sweep.runs)
    assert set(df["status"]) == {"running"}  # created, never trained
    assert sorted(df["seed"]) == [0, 0, 1, 1]
    assert set(df["config.schedule.delta_update"]) == {0.75}
    assert df.attrs["counts"]["expected"] == 4 and df.attrs["parent_run_id"] == synced.parent
    assert not server_healthy(synced.read["uri"])  # the server it started is stopped again
    with pytest.raises(SparlingError, match="no MLflow tracking store"):
        runs_frame("synced", tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


def test_the_parent_counts_and_ends_by_every_run_the_sweep_has_planned(tmp_path: Path) -> None:
    """Starts of one sweep with ``--seeds`` narrowing and widening it, then a changed
    config: the parent's ``sparling.expected_runs`` is the number of runs planned so far
    (less those of earlier configs), the report agrees, and the parent ends FINISHED only
    once every one of them has finished, whatever the start planned."""
    from pipelines.executors.base import RunOutcome
    from pipelines.plan import SweepOverrides, build_sweep
    from pipelines.report.collect import read_sweep
    from pipelines.sync import mark_ended
    from pipelines.tracking.server import tracking_uri
    from pipelines.tracking.settings import load_settings

    spec = {"name": "narrowed", "base": tiny_config(), "methods": ["sparling"], "seeds": [0, 1]}
    work = tmp_path / "work"
    settings = load_settings(work)
    experiment = settings.experiment_for(sweep="narrowed")

    def start(ends: dict[int, str], **overrides: Any) -> tuple[str, str, int]:
        """A start planning ``overrides``; each run of seed s ends as ``ends[s]``, as an
        executor would have it end (finished: its child FINISHED; stopped: KILLED).
        Returns the parent's status and expected count, and the runs the report reads."""
        sweep = build_sweep(spec, overrides=SweepOverrides(**overrides))
        outcomes: dict[str, RunOutcome] = {}
        with tracking_context(sweep, work, list(sweep.runs), outcomes) as (tracking, parent):
            for run in sweep.runs:
                status = ends[run.seed]
                outcomes[run.key] = RunOutcome(run.key, run.name, status)
                if status == "finished":
                    Tracker(tracking["uri"]).set_terminated(tracking["runs"][run.key])
                else:
                    mark_ended(tracking, run, status, "")
        tracker = Tracker(uri)
        tags = tracker.client.get_run(parent).data.tags
        notes: list[str] = []
        report = read_sweep(uri, experiment, "narrowed", notes)
        assert report.counts.expected == int(tags["sparling.expected_runs"]), notes
        status = tracker.client.get_run(parent).info.status
        return status, tags["sparling.expected_runs"], report.counts.present

    with tracking_uri(settings) as uri:
        # seed 0 finishes, seed 1 is stopped: 2 planned, the sweep not done
        assert start({0: "finished", 1: "stopped"}) == ("KILLED", "2", 2)
        # --seeds 0 alone: still 2 planned, and seed 1 is still to finish
        assert start({0: "finished"}, seeds=[0]) == ("KILLED", "2", 2)
        # --seeds 1 finishes it: every planned run finished
        assert start({1: "finished"}, seeds=[1]) == ("FINISHED", "2", 2)
        # --seeds 0-2 widens it; a failed run fails the parent until it is run again
        assert start({0: "finished", 1: "finished", 2: "failed"}, seeds=[0, 1, 2]) == (
            "FAILED",
            "3",
            3,
        )
        assert start({0: "finished"}, seeds=[0]) == ("FAILED", "3", 3)
        # a changed config (every run a new id) under the same names: the earlier runs
        # of seeds 0 and 1 are superseded and not counted; seed 2's earlier run is
        # another name's, still planned
        assert start({0: "finished", 1: "finished"}, set={"optim.lr": 1e-3}) == (
            "FAILED",
            "3",
            3,
        )
        assert start({2: "finished"}, set={"optim.lr": 1e-3}, seeds=[2]) == ("FINISHED", "3", 3)


def test_a_run_failed_in_an_earlier_start_and_stopped_in_this_one_reads_as_stopped(
    tmp_path: Path,
) -> None:
    """A run an earlier start ended as failed, with its reason, is planned again and
    stopped (a deadline): its child says stopped, without the old failure, so the report
    does not list it among the failed runs."""
    from pipelines.executors.base import RunOutcome
    from pipelines.plan import build_sweep
    from pipelines.report.collect import read_sweep
    from pipelines.sync import mark_ended
    from pipelines.tracking.server import tracking_uri
    from pipelines.tracking.settings import load_settings

    spec = {"name": "again", "base": tiny_config(), "methods": ["sparling"], "seeds": [0]}
    work = tmp_path / "work"
    settings = load_settings(work)
    sweep = build_sweep(spec)
    (run,) = sweep.runs

    def start(status: str, reason: str) -> Any:
        outcomes = {run.key: RunOutcome(run.key, run.name, status, reason)}
        with tracking_context(sweep, work, [run], outcomes) as (tracking, _):
            mark_ended(tracking, run, status, reason)
        notes: list[str] = []
        (record,) = read_sweep(uri, settings.experiment_for(sweep="again"), "again", notes).runs
        return record.status, record.failure

    with tracking_uri(settings) as uri:
        assert start("failed", "its source failed") == ("failed", "its source failed")
        assert start("stopped", "not started: stopped at the deadline") == ("stopped", None)
        assert start("failed", "boom") == ("failed", "boom")


def test_a_finished_run_logged_without_its_validations_gets_them_from_its_history(
    tmp_path: Path,
) -> None:
    """A run finished on disk whose child is FINISHED but holds no validation (logged from
    its evaluation alone, as a fresh store once did): the next start sends its
    ``history.json``, so the report's curves have it."""
    from pipelines.plan import build_sweep
    from pipelines.tracking.server import tracking_uri
    from pipelines.tracking.settings import load_settings
    from sparling.runs import RunFolder

    spec = {"name": "curves", "base": tiny_config(), "methods": ["sparling"], "seeds": [0]}
    work = tmp_path / "work"
    sweep = build_sweep(spec)
    (run,) = sweep.runs
    with tracking_uri(load_settings(work)) as uri:
        with tracking_context(sweep, work, [run]) as (tracking, _):
            child = tracking["runs"][run.key]
            Tracker(uri).set_terminated(child)  # FINISHED, no validation logged
        folder = RunFolder.for_config(run.config, work)
        folder.path.mkdir(parents=True, exist_ok=True)
        records = [
            {"samples": s, "density": 0.5, "val_accuracy": a, "val_e2ee": 1 - a}
            for s, a in ((16, 0.25), (32, 0.5))
        ]
        (folder.path / "history.json").write_text(json.dumps(records))
        with tracking_context(sweep, work, []):  # finished on disk: nothing to train
            pass
        client = Tracker(uri).client
        points = client.get_metric_history(child, "val/exact_match")
        assert sorted((p.step, p.value) for p in points) == [(16, 0.25), (32, 0.5)]
        assert client.get_run(child).info.status == "FINISHED"
