"""The Ray executor on an autoscaling cluster: the waiting runs are shown to the autoscaler
(one placeholder task per training bundle, :class:`ClusterDemand`), so a sweep grows a
cluster from no worker node to as many as its runs can use, and lets them go again.

The unit tests drive :class:`ClusterDemand` with fakes; the integration test runs real
sweeps on Ray's fake multi-node cluster (``bench/autoscaling_cluster.py``: a raylet per
"node", one logical CPU each, on this machine)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, subprocess_env, sweep_command, tiny_config

from pipelines.display import SweepDisplay
from pipelines.executors.ray_executor import (
    PLACEHOLDER_RETRY_S,
    ClusterDemand,
    _needs,
    training_bundles,
)
from pipelines.plan import build_sweep
from pipelines.train_job import RunPaths, build_trainer
from sparling.config import RunConfig

sys.path.insert(0, str(REPO / "bench"))
from autoscaling_cluster import Watch, autoscaling_cluster  # noqa: E402
from bench_autoscale import TRAIN_REQUEST_EXPIRY_S, most_at_once, run_intervals  # noqa: E402


def planned(seeds: list[int], **updates: Any) -> list[Any]:
    sweep = {"name": "demand", "base": tiny_config(**updates), "methods": ["sparling"]}
    return build_sweep({**sweep, "seeds": seeds}, source="test").runs


# -- the bundles -------------------------------------------------------------------------------
def test_training_bundles_are_what_the_trainer_asks_for(tmp_path: Path) -> None:
    update = {"compute.workers": 2, "compute.cpus_per_worker": 3, "compute.gpus_per_worker": 0.5}
    run = planned([0], **update)[0]
    paths = RunPaths(tmp_path, tmp_path, tmp_path, tmp_path)
    scaling = build_trainer(run.config, paths, tmp_path).scaling_config
    per_worker = scaling._resources_per_worker_not_none
    assert training_bundles(run) == [per_worker] * scaling.num_workers
    assert training_bundles(run) == [{"CPU": 3.0, "GPU": 0.5}] * 2
    assert _needs(run) == {"CPU": 6.0, "GPU": 1.0}
    assert training_bundles(planned([0])[0]) == [{"CPU": 1.0}]


# -- ClusterDemand with fakes --------------------------------------------------------------------
class FakeRay:
    """Placeholders as plain objects: ``ran`` marks those the fake cluster has run."""

    def __init__(self) -> None:
        self.now = 0.0
        self.placed: list[tuple[int, dict[str, float]]] = []
        self.cancelled: set[int] = set()
        self.ran: set[int] = set()

    def place(self, bundle: dict[str, float]) -> int:
        self.placed.append((len(self.placed), bundle))
        return len(self.placed) - 1

    def cancel(self, ref: int) -> None:
        self.cancelled.add(ref)

    def done(self, refs: list[int]) -> list[int]:
        return [r for r in refs if r in self.ran]

    def demand(self, **kwargs: Any) -> ClusterDemand:
        return ClusterDemand(self.place, self.cancel, self.done, clock=lambda: self.now, **kwargs)

    def pending(self) -> list[dict[str, float]]:
        return [b for r, b in self.placed if r not in self.cancelled and r not in self.ran]


def test_one_placeholder_per_bundle_of_each_waiting_run() -> None:
    fake = FakeRay()
    demand = fake.demand()
    two_workers = planned([0, 1], **{"compute.workers": 2, "compute.cpus_per_worker": 4})
    gpu = planned([5], **{"compute.gpus_per_worker": 1})
    demand.update(two_workers + gpu)
    assert sorted(map(str, fake.pending())) == sorted(
        map(str, [{"CPU": 4.0}] * 4 + [{"CPU": 1.0, "GPU": 1.0}])
    )
    demand.update(two_workers + gpu)  # nothing changed: nothing asked again
    assert len(fake.placed) == 5 and demand.pending == 5 and demand.peak == 5
    demand.update(two_workers[1:])  # one CPU run and the GPU run started
    assert sorted(map(str, fake.pending())) == [str({"CPU": 4.0})] * 2
    assert demand.pending == 2 and len(fake.cancelled) == 3


def test_a_placeholder_that_ran_is_not_replaced_at_once() -> None:
    fake = FakeRay()
    demand = fake.demand()
    runs = planned([0, 1, 2])
    demand.update(runs)
    fake.ran.add(0)  # room for one run: the executor starts it
    fake.now = 1.0
    demand.update(runs[1:])
    assert len(fake.pending()) == 2 and len(fake.placed) == 3
    fake.ran.add(1)  # room again, but something else takes it: the run still waits
    fake.now = 2.0
    demand.update(runs[1:])
    assert len(fake.pending()) == 1 and len(fake.placed) == 3, "asked again in a tight loop"
    fake.now = 2.0 + PLACEHOLDER_RETRY_S
    demand.update(runs[1:])
    assert len(fake.pending()) == 2 and len(fake.placed) == 4


def test_release_cancels_every_pending_placeholder() -> None:
    fake = FakeRay()
    demand = fake.demand()
    demand.update(planned([0, 1, 2]))
    fake.ran.add(1)
    demand.release()
    assert fake.pending() == [] and fake.cancelled == {0, 1, 2} and demand.pending == 0
    demand.release()  # twice is harmless
    off = fake.demand(enabled=False)
    off.update(planned([3]))
    assert len(fake.placed) == 3 and off.pending == 0


def test_display_shows_starting_waiting_and_the_cluster_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    display = SweepDisplay(planned([0, 1, 2, 3]), tmp_path, enabled=True)
    display.refresh(started=1, waiting=3, cluster={"CPU": 16.0, "GPU": 1.0, "memory": 8e9})
    display.refresh(started=2, waiting=2, cluster={"CPU": 0.0})  # a head of no CPU
    display.close()
    err = capsys.readouterr().err
    assert "starting=1" in err and "waiting=3" in err and "cluster=16 CPU 1 GPU" in err
    assert "starting=2" in err and "waiting=2" in err and "memory" not in err
    assert "cluster=0" not in err


# -- on a fake autoscaling cluster ---------------------------------------------------------------
#: worker nodes (of one logical CPU) the fake cluster may launch, and the runs of the sweep
#: that grows it; the interrupted sweep has more runs than that
MAX_NODES = 2
IDLE_TIMEOUT_S = 20.0


def write_sweep(tmp_path: Path, name: str, seeds: list[int], work: Path) -> Path:
    """A sweep of tiny 1-CPU runs whose datasets are generated here, without Ray, so that
    nothing but the runs asks the cluster for resources."""
    from sparling.datasets import prepare_datasets

    base = tiny_config(**{"budget_samples": 160, "val_interval": 80})
    prepare_datasets(RunConfig.model_validate(base), work, progress=False)
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump({"name": name, "base": base, "methods": ["sparling"], "seeds": seeds})
    )
    return path


@pytest.mark.integration
def test_sweep_grows_the_cluster_for_its_waiting_runs_and_lets_it_shrink(tmp_path: Path) -> None:
    work = tmp_path / "work"
    path = write_sweep(tmp_path, "grow", list(range(MAX_NODES)), work)
    with autoscaling_cluster(
        {"CPU": 1}, max_nodes=MAX_NODES, idle_timeout_s=IDLE_TIMEOUT_S
    ) as cluster:
        assert cluster.status()["launched"] == 0, "the cluster must start with no worker node"
        env = subprocess_env(**cluster.env)
        watch = Watch(cluster).start()
        done = subprocess.run(
            sweep_command(path, work, "--no-tracking"),
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        results = [json.loads(p.read_text()) for p in (work / "runs").glob("*/result.json")]
        assert len(results) == MAX_NODES and all(r["samples"] == 160 for r in results)
        # No run started before there was room; the autoscaler launched a node for each
        # waiting run (from none), and the runs trained side by side, one on each.
        assert "waiting for room: run sparling seed=0 needs 1 CPU, the cluster has 0 CPU" in (
            done.stderr
        ), done.stderr[-3000:]
        assert watch.peak("pending") >= 1, "no placeholder was ever pending"
        assert watch.peak("alive") == MAX_NODES, watch.samples[-5:]
        assert most_at_once(run_intervals(work)) == MAX_NODES, run_intervals(work)
        assert len({r["node_id"] for r in results}) == MAX_NODES, results
        # No placeholder or placement group is left, the nodes are idle, and they go. (A
        # run's Ray Train registration can outlive it when its 5 s withdrawal times out on
        # a loaded machine; it then expires within TRAIN_REQUEST_EXPIRY_S.)
        cluster.wait_for(
            "no placeholder or placement group left",
            lambda s: not s["pending"] and not s["pending_pgs"] and s["idle"] == s["alive"],
            30,
        )
        cluster.wait_for(
            "no worker node left",
            lambda s: s["alive"] == 0,
            IDLE_TIMEOUT_S + TRAIN_REQUEST_EXPIRY_S + 60,
        )
        watch.stop()

        # More runs than the cluster may hold: it still grows to its limit (a request for
        # more than the limit, granted whole or not at all, would launch no node). Then
        # Ctrl-C while the third run waits: nothing is left asking.
        work2 = tmp_path / "work2"
        path2 = write_sweep(tmp_path, "interrupted", [10, 11, 12], work2)
        proc = subprocess.Popen(
            sweep_command(path2, work2, "--no-tracking"),
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            cluster.wait_for("the cluster at its limit", lambda s: s["alive"] == MAX_NODES, 180)
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130 and "interrupted (Ctrl-C)" in out, out[-3000:]
        cluster.wait_for(
            "no placeholder or placement group left",
            lambda s: not s["pending"] and not s["pending_pgs"],
            30,
        )
    left = subprocess.run(["pgrep", "-f", str(cluster.temp_dir)], capture_output=True, text=True)
    assert not left.stdout.split() and not cluster.temp_dir.exists(), "cluster left behind"
