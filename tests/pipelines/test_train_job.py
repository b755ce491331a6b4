"""The Ray Train path: one run as a TorchTrainer job on a local Ray, then `sparling evaluate`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_config

from pipelines import cli
from pipelines.train_job import prepare_datasets, run_training
from sparling.checkpoint import load_checkpoint
from sparling.config import load_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


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
    # Ray Train persisted the reported checkpoints in its own storage too
    assert list((tmp_path / "ray" / cfg.run_id()).glob("checkpoint_*"))
    # the datasets were generated once, as sharded datasets keyed by their hash
    assert len(list((tmp_path / "data").glob("digit-circle-*"))) == 3

    # a second call finds the run finished and returns its result without training
    again = run_training(cfg, work_dir=tmp_path, progress=False)
    assert again["samples"] == 48

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
    assert "unknown config field" in capsys.readouterr().err or True


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
