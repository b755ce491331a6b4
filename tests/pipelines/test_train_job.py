"""The Ray Train path: one run as a TorchTrainer job on a local Ray, then `sparling evaluate`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import OWN_CLUSTER, tiny_config
from conftest import local_ray as local_ray_instance

from pipelines import cli
from pipelines.train_job import prepare_datasets, run_training
from sparling.checkpoint import load_checkpoint
from sparling.config import load_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    with local_ray_instance(num_cpus=2):
        yield


def test_run_as_ray_train_job_then_evaluate(
    local_ray: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load_config(tiny_config())
    result = run_training(cfg, work_dir=tmp_path, progress=False)
    assert result["status"] == "budget-exhausted" and result["samples"] == 48
    run_dir = tmp_path / "runs" / cfg.run_id()
    assert json.loads((run_dir / "config.json").read_text())["seed"] == 0
    state, meta = load_checkpoint(run_dir / "checkpoints" / "last")
    assert meta["samples"] == 48 and meta["run_id"] == cfg.run_id()
    # one owner of checkpoints, the run folder: Ray Train's storage holds none
    assert (tmp_path / "ray" / cfg.run_id()).is_dir()
    assert not list((tmp_path / "ray").rglob("state.pt"))
    # the datasets were generated once, as sharded datasets keyed by their hash
    assert len(list((tmp_path / "data").glob("digit-circle-*"))) == 3

    # a second call finds the run finished and returns its result without training
    again = run_training(cfg, work_dir=tmp_path, progress=False)
    assert again["samples"] == 48

    # a larger budget takes the result of this run once it ended by itself (as if AST had
    # reached its target at 48 samples): no Ray Train job, its result copied
    summary = json.loads((run_dir / "result.json").read_text())
    (run_dir / "result.json").write_text(json.dumps({**summary, "status": "target-reached"}))
    longer_cfg = load_config(tiny_config(budget_samples=96))
    longer = run_training(longer_cfg, work_dir=tmp_path, progress=False)
    assert (longer["status"], longer["samples"]) == ("target-reached", 48)
    assert longer["continued_from"] == cfg.run_id()
    assert not (tmp_path / "ray" / longer_cfg.run_id()).exists()
    assert (tmp_path / "runs" / longer_cfg.run_id() / "checkpoints" / "last").is_dir()
    (run_dir / "result.json").write_text(json.dumps(summary))
    said = capsys.readouterr()  # the continuation is announced, naming the run it took
    assert cfg.run_id() in said.out + said.err, said

    assert cli.main(["evaluate", str(run_dir), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"fpe", "fne", "ce", "e2ee", "density"} <= set(doc)
    assert (run_dir / "evaluation" / "last" / "activations.png").is_file()


def test_train_cli_reports_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("batch_size: zero\nschedule: {delta_update: 2}\n")
    assert cli.main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "batch_size" in err and "schedule.delta_update" in err and str(bad) in err
    good = tmp_path / "good.yaml"
    good.write_text("seed: 1\n")
    assert cli.main(["train", str(good), "--set", "optim.nope=1"]) == 2
    err = capsys.readouterr().err
    assert "--set" in err and "optim.nope: unknown key" in err and "lr" in err, err


def test_killed_worker_is_retried_from_its_checkpoint_with_the_same_result(
    local_ray: None, tmp_path: Path
) -> None:
    """SIGKILL the Ray Train worker process mid-run: FailureConfig restarts it, it resumes
    from the last checkpoint, and every validation record matches an uninterrupted run."""
    import os
    import signal
    import threading
    import time

    cfg = load_config(
        tiny_config(**{"data.train_size": 64, "budget_samples": 8 * 120, "val_interval": 64})
    )
    work = tmp_path / "killed"
    run_dir = work / "runs" / cfg.run_id()
    killed: dict[str, int] = {}

    def killer() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                info = json.loads((run_dir / "progress.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                info = {}
            # after two checkpoints, before the end
            if 3 * 64 <= info.get("samples", 0) < cfg.budget_samples - 128:
                killed.update(pid=int(info["pid"]), samples=int(info["samples"]))
                os.kill(killed["pid"], signal.SIGKILL)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = run_training(cfg, work_dir=work, progress=False)
    thread.join(timeout=5)
    assert killed, "the worker was never seen mid-run"
    assert json.loads((run_dir / "progress.json").read_text())["pid"] != killed["pid"]
    assert result["status"] == "budget-exhausted" and result["validations"] == 15

    # The uninterrupted run: the same library loop in this process, on the same shards,
    # with the worker's one thread (the Ray path adds nothing to the arithmetic).
    import torch

    from sparling.shards import ShardedDataset
    from sparling.train import make_trainer

    paths = prepare_datasets(cfg, work, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        clean = make_trainer(
            cfg,
            ShardedDataset(paths["train"]),
            ShardedDataset(paths["val"]),
            tmp_path / "clean",
            progress=False,
        )
        clean.fit()
    finally:
        torch.set_num_threads(threads)
    keys = ("samples", "density", "train_loss", "val_accuracy", "val_e2ee", "threshold")
    a, _ = load_checkpoint(run_dir / "checkpoints" / "last")
    assert [{k: r[k] for k in keys} for r in a["history"]] == [
        {k: r[k] for k in keys} for r in clean.history
    ]
    _assert_same_state(a["model"], clean.model.state_dict())


def _assert_same_state(a: Any, b: Any, where: str = "model") -> None:
    import torch

    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, torch.Tensor):
        assert a.equal(b), where
    else:
        assert a == b, where


def test_sweep_trains_retrained_after_its_source(local_ray: None, tmp_path: Path) -> None:
    # Two runs, two CPUs: without the dependency both would start at once and the
    # Retrained run would find no checkpoint to take g from.
    from pipelines.plan import build_sweep
    from pipelines.sweep import run_sweep

    sweep = build_sweep(
        {
            "name": "retrained",
            "base": tiny_config(),
            "methods": ["sparling", {"name": "retrained", "from": "sparling"}],
        }
    )
    source, retrained = sweep.runs
    assert retrained.after == source.key
    summary = run_sweep(sweep, tmp_path, progress=False, track=False)
    assert [o.status for o in summary.outcomes] == ["finished", "finished"], summary.outcomes
    src_dir, rt_dir = (tmp_path / "runs" / r.key for r in (source, retrained))
    started = json.loads((rt_dir / "progress.json").read_text())["startup"]["worker_start"]
    assert (src_dir / "result.json").stat().st_mtime <= started
    # g is the source's (at the checkpoint init_from selects), frozen
    from sparling.evaluate import select_checkpoint

    src_state, _ = load_checkpoint(select_checkpoint(src_dir))
    rt_state, _ = load_checkpoint(rt_dir / "checkpoints" / "last")
    g_keys = [k for k in rt_state["model"] if k.startswith("g.") and "running" not in k]
    assert g_keys
    for k in g_keys:
        if rt_state["model"][k].is_floating_point():
            assert torch.equal(rt_state["model"][k], src_state["model"][k]), k


def test_retrained_run_fails_when_its_source_fails(local_ray: None, tmp_path: Path) -> None:
    from pipelines.plan import build_sweep
    from pipelines.sweep import run_sweep

    missing = "run:0123456789abcdef"  # the source run refers to a run that does not exist
    sweep = build_sweep(
        {
            "name": "retrained-failing",
            "base": tiny_config(),
            "methods": [
                {"name": "sparling", "set": {"init_from": missing}},
                {"name": "retrained", "from": "sparling"},
            ],
        }
    )
    summary = run_sweep(sweep, tmp_path, progress=False, track=False)
    source, retrained = summary.outcomes
    assert source.status == "failed" and "0123456789abcdef has no checkpoints" in source.reason
    assert retrained.status == "failed"
    assert f"({sweep.runs[0].key}), whose g it retrains, failed" in retrained.reason
    assert not (tmp_path / "runs" / sweep.runs[1].key).exists()  # never started


def _read_progress(run_dir: Path) -> dict[str, Any]:
    try:
        info: dict[str, Any] = json.loads((run_dir / "progress.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return info


def test_sigterm_to_sparling_train_checkpoints_at_the_step_and_the_rerun_resumes(
    local_ray: None, tmp_path: Path
) -> None:
    """A real SIGTERM to a real `sparling train` (a Ray Train job on its own local Ray),
    between validations 640 samples apart: the worker writes its checkpoint within a few
    steps of the signal, the command exits 143 saying so, and running it again resumes
    from that step to the result of a run never stopped."""
    import signal
    import subprocess
    import sys
    import time

    import yaml
    from conftest import REPO, subprocess_env

    from sparling.checkpoint import read_meta

    batch = 16
    cfg_dict = tiny_config(
        **{
            "data.train_size": 64,
            "batch_size": batch,
            "budget_samples": batch * 50,
            "val_interval": batch * 40,
        }
    )
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg_dict))
    cfg = load_config(cfg_dict)
    work = tmp_path / "work"
    run_dir = work / "runs" / cfg.run_id()
    command = [sys.executable, "-m", "pipelines.cli", "train", str(path)]
    command += ["--work-dir", str(work), "--quiet"]

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            command,
            cwd=REPO,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    proc = start()
    try:
        # The worker rewrites progress.json at most once a second: signal the moment a
        # record past 8 steps appears, when its sample count is the worker's own.
        seen: dict[str, Any] = {}
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            info = _read_progress(run_dir)
            if info != seen and info.get("samples", 0) >= batch * 8:
                break
            seen = info
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            time.sleep(0.005)
        signalled_at = int(info["samples"])
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=200)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out[-3000:]
    assert "stopped on SIGTERM: it wrote its checkpoint at sample" in out, out[-3000:]
    meta = read_meta(run_dir / "checkpoints" / "last")
    print(f"signalled at sample {signalled_at}, checkpoint at {meta['samples']}")
    # nothing trained before the signal is lost; a few steps are trained after it (the
    # worker looks for the request every quarter second), never a validation interval
    assert signalled_at <= meta["samples"] <= signalled_at + 12 * batch, (signalled_at, meta)
    assert meta["samples"] < batch * 40  # before the first validation
    stopped = _read_progress(run_dir)
    assert stopped["state"] == "stopped" and stopped["samples"] == meta["samples"]
    assert not (run_dir / "stop-request.json").exists()
    assert not (run_dir / "result.json").exists()
    assert not list((work / "ray").rglob("state.pt"))  # no second copy in Ray's storage

    # again, here (on this module's Ray): the new worker's first progress record is the
    # step after the checkpoint's
    import threading

    firsts: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            info = _read_progress(run_dir)
            if info.get("pid") not in (None, stopped["pid"]) and "samples" in info:
                firsts.append(int(info["samples"]))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        run_training(cfg, work_dir=work, progress=False)
    finally:
        done.set()
        watcher.join(timeout=5)
    assert min(firsts) == meta["samples"] + batch, firsts[:5]  # resumed at the next step
    result = json.loads((run_dir / "result.json").read_text())
    assert result["samples"] == batch * 50 and result["validations"] == 2

    from sparling.shards import ShardedDataset
    from sparling.train import make_trainer

    paths = prepare_datasets(cfg, work, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the worker's
    try:
        clean = make_trainer(
            cfg,
            ShardedDataset(paths["train"]),
            ShardedDataset(paths["val"]),
            tmp_path / "clean",
            progress=False,
        )
        clean.fit()
    finally:
        torch.set_num_threads(threads)
    keys = ("samples", "density", "train_loss", "val_accuracy", "val_e2ee", "threshold")
    a, _ = load_checkpoint(run_dir / "checkpoints" / "last")
    assert [{k: r[k] for k in keys} for r in a["history"]] == [
        {k: r[k] for k in keys} for r in clean.history
    ]
    _assert_same_state(a["model"], clean.model.state_dict())
    _assert_same_state(a["optimizer"], clean.optimizer.state_dict(), "optimizer")


@OWN_CLUSTER
def test_a_worker_on_a_node_sent_sigterm_checkpoints_before_it_goes_and_resumes_elsewhere(
    tmp_path: Path,
) -> None:
    """A spot node reclaimed: SIGTERM to the `ray start --block` node that runs the
    run's Ray Train worker (what Kubernetes does to a deleted pod). Ray drains the node as
    preempted (for 6 s here, ``RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S``), Ray Train's
    preemption notice reaches the worker, which writes its checkpoint at the step it is
    on and waits; the node goes, Ray Train restarts the worker on a new node, and it
    resumes from that step to the result of a run never stopped."""
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    import yaml
    from conftest import REPO, free_port, subprocess_env

    from sparling.checkpoint import read_meta

    ray_bin = str(Path(sys.executable).with_name("ray"))
    # Ray's socket paths must stay under 108 characters; the teardown ends only the
    # processes of this cluster (named by this folder, a random name that starts no
    # other's), never another Ray here.
    temp = Path(tempfile.mkdtemp(prefix="rpt", dir="/tmp"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = subprocess_env(RAY_AUTH_MODE="disabled")
    common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    batch = 16
    cfg_dict = tiny_config(
        **{
            "data.train_size": 64,
            "batch_size": batch,
            "budget_samples": batch * 50,
            "val_interval": batch * 40,
        }
    )
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg_dict))
    cfg = load_config(cfg_dict)
    work = tmp_path / "work"
    run_dir = work / "runs" / cfg.run_id()

    def node(*extra: str, **more_env: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [ray_bin, "start", "--block", f"--address={address}", *common, *extra],
            env={**env, **more_env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    started: list[subprocess.Popen[Any]] = []
    # the head has no CPU for a worker: the run trains on the node that will be reclaimed
    subprocess.run(
        [ray_bin, "start", "--head", f"--port={port}", "--num-cpus=0"]
        + ["--include-dashboard=false", f"--temp-dir={temp}", *common],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        spot = node("--num-cpus=1", RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="6")
        started.append(spot)
        driver = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "train", str(path)]
            + ["--work-dir", str(work), "--quiet"],
            cwd=REPO,
            # Ray Train looks for drained nodes every 5 s by default
            env={**env, "RAY_ADDRESS": address, "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "0.5"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started.append(driver)
        seen: dict[str, Any] = {}
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            info = _read_progress(run_dir)
            if info != seen and info.get("samples", 0) >= batch * 8:
                break
            seen = info
            assert driver.poll() is None, driver.communicate()[0][-3000:]
            time.sleep(0.005)
        signalled_at = int(info["samples"])
        spot.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        while time.monotonic() < signalled + 60:
            notice = _read_progress(run_dir)
            if notice.get("state") == "preempted":
                break
            time.sleep(0.02)
        noticed_after = time.monotonic() - signalled
        assert notice.get("state") == "preempted", notice
        meta = read_meta(run_dir / "checkpoints" / "last")
        print(
            f"node sent SIGTERM at sample {signalled_at}; checkpoint at {meta['samples']}, "
            f"{noticed_after:.1f} s later"
        )
        # before the node went (its drain lasts 6 s), at the step the worker was on
        assert noticed_after < 6
        assert notice["reason"] == "Ray Train's preemption notice"
        assert signalled_at <= meta["samples"] == notice["samples"] < batch * 40

        started.append(node("--num-cpus=1"))  # the replacement node
        firsts: list[int] = []  # the restarted worker's progress records
        while driver.poll() is None:
            info = _read_progress(run_dir)
            if info.get("pid") not in (None, notice["pid"]) and "samples" in info:
                firsts.append(int(info["samples"]))
            time.sleep(0.005)
        out = driver.communicate(timeout=60)[0]
    finally:
        for p in started:
            if p.poll() is None:
                p.terminate()
        found = subprocess.run(["pgrep", "-f", str(temp)], capture_output=True, text=True)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in [int(p) for p in found.stdout.split()]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            time.sleep(1)
        for p in started:
            if p.poll() is None:
                p.kill()
            p.wait()
        shutil.rmtree(temp, ignore_errors=True)
    assert driver.returncode == 0, out[-3000:]
    assert min(firsts) == meta["samples"] + batch, firsts[:5]  # resumed at the next step
    result = json.loads((run_dir / "result.json").read_text())
    assert result["samples"] == batch * 50 and result["validations"] == 2
    assert result["node_id"] != notice["node_id"]  # finished on the replacement node

    from sparling.shards import ShardedDataset
    from sparling.train import make_trainer

    paths = prepare_datasets(cfg, work, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the worker's
    try:
        clean = make_trainer(
            cfg,
            ShardedDataset(paths["train"]),
            ShardedDataset(paths["val"]),
            tmp_path / "clean",
            progress=False,
        )
        clean.fit()
    finally:
        torch.set_num_threads(threads)
    keys = ("samples", "density", "train_loss", "val_accuracy", "val_e2ee", "threshold")
    a, _ = load_checkpoint(run_dir / "checkpoints" / "last")
    assert [{k: r[k] for k in keys} for r in a["history"]] == [
        {k: r[k] for k in keys} for r in clean.history
    ]
    _assert_same_state(a["model"], clean.model.state_dict())
    _assert_same_state(a["optimizer"], clean.optimizer.state_dict(), "optimizer")


@contextlib.contextmanager
def _created_dirs(folder: Path) -> Iterator[list[str]]:
    """The names of the folders created in ``folder`` while the block runs (Linux
    inotify: none is missed, however short-lived, as a polled listing could)."""
    import ctypes
    import select
    import struct

    libc = ctypes.CDLL(None, use_errno=True)
    in_create, in_isdir, in_moved_to = 0x100, 0x40000000, 0x80
    fd = libc.inotify_init1(os.O_NONBLOCK)
    assert fd >= 0, ctypes.get_errno()
    assert libc.inotify_add_watch(fd, str(folder).encode(), in_create | in_moved_to) >= 0
    names: list[str] = []
    until = threading.Event()

    def read() -> None:
        while not until.is_set() or select.select([fd], [], [], 0)[0]:
            if not select.select([fd], [], [], 0.05)[0]:
                continue
            data = os.read(fd, 65536)
            at = 0
            while at < len(data):
                _wd, mask, _cookie, size = struct.unpack_from("iIII", data, at)
                name = data[at + 16 : at + 16 + size].rstrip(b"\0").decode()
                if mask & in_isdir and mask & in_create:
                    names.append(name)
                at += 16 + size

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield names
    finally:
        until.set()
        reader.join(timeout=5)
        os.close(fd)


def test_a_two_worker_run_told_to_stop_writes_one_checkpoint_and_both_workers_end(
    local_ray: None, tmp_path: Path
) -> None:
    """Data parallel (2 Ray Train workers, DDP on gloo) and a stop request mid-interval:
    the ranks agree on the step, rank 0 alone writes `checkpoints/last` there, both
    workers end without an error (Ray Train reports none), and `run_training` raises
    RunStopped with that step."""
    import time

    from pipelines.train_job import RunStopped, write_stop_request
    from sparling.checkpoint import read_meta
    from sparling.runs import RunFolder

    batch = 8  # per worker: a step is 16 samples
    cfg = load_config(
        tiny_config(
            **{
                "data.train_size": 64,
                "batch_size": batch,
                "compute.workers": 2,
                "budget_samples": 2 * batch * 400,
                "val_interval": 2 * batch * 300,
            }
        )
    )
    folder = RunFolder.for_config(cfg, tmp_path)
    folder.checkpoints_dir.mkdir(parents=True)  # watched from the start
    asked: list[int] = []

    def stop_after_8_steps() -> None:
        until = time.monotonic() + 300
        while time.monotonic() < until:
            info = _read_progress(folder.path)
            if info.get("samples", 0) >= 2 * batch * 8:
                asked.append(int(info["samples"]))
                write_stop_request(folder, "a test's stop request")
                return
            time.sleep(0.01)

    asker = threading.Thread(target=stop_after_8_steps, daemon=True)
    asker.start()
    with (
        _created_dirs(folder.checkpoints_dir) as made,
        pytest.raises(RunStopped) as stopped,
    ):
        run_training(cfg, work_dir=tmp_path, progress=False)
    asker.join(timeout=5)
    assert asked, "the run never trained 8 steps"
    at = stopped.value.samples
    assert at is not None and at % (2 * batch) == 0 and asked[0] <= at < 2 * batch * 300
    assert stopped.value.reason == "a test's stop request"
    # one writer: one temporary folder made (rank 0's), renamed into `last`; nothing else
    assert [n for n in made if n.startswith(".last.")] and len(made) == 1, made
    assert sorted(p.name for p in folder.checkpoints_dir.iterdir()) == ["last"]
    assert read_meta(folder.last)["samples"] == at
    load_checkpoint(folder.last)  # complete: its sha256 verified
    assert _read_progress(folder.path)["state"] == "stopped"
    assert not folder.stop_request_path.exists() and folder.read_result() is None
