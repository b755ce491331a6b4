"""``sparling.fit``: one run in this process, in its run folder; resumed, then looked up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import tiny_config

import sparling
from sparling.config import load_config
from sparling.runs import RunFolder
from sparling.shards import ShardedDataset
from sparling.train import RunResult, Trainer


def _without_wall(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in history]


def test_fit_trains_writes_the_run_folder_and_then_returns_its_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config()
    result = sparling.fit(cfg, tmp_path, progress=False)
    folder = RunFolder.for_config(load_config(cfg), tmp_path)
    assert isinstance(result, RunResult) and result.run_dir == folder.path
    assert result.status == "budget-exhausted" and result.samples == 48
    assert [r["samples"] for r in result.history] == [16, 32, 48]
    assert result.val_accuracy == result.history[-1]["val_accuracy"]
    assert result.density == pytest.approx(result.history[-1]["next_density"])
    # the run folder, as the pipeline lays it out
    assert folder.read_config() == load_config(cfg)
    assert folder.has_checkpoint()
    assert folder.read_history() == result.history
    summary = folder.read_result()
    assert summary is not None and summary["samples"] == 48 and summary["validations"] == 3
    # the datasets it read, generated here
    assert len(ShardedDataset(next((tmp_path / "data").glob("digit-circle-train-*")))) == 32

    # Again: the same result, without building a trainer.
    def no_training(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(Trainer, "__init__", no_training)
    assert sparling.fit(load_config(cfg), tmp_path, progress=False) == result


def test_fit_resumes_a_stopped_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config()
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    reference = sparling.fit(path, tmp_path / "reference", progress=False)

    # Stop the run at its first validation (after it wrote its checkpoint), then fit again.
    def stop(*_args: Any) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(RunFolder, "write_history", stop)
        with pytest.raises(KeyboardInterrupt):
            sparling.fit(str(path), tmp_path / "work", progress=False)
    folder = RunFolder.for_config(load_config(cfg), tmp_path / "work")
    assert folder.read_result() is None and folder.has_checkpoint()

    steps: list[int] = []
    train_step = Trainer._train_step

    def counted(self: Trainer, samples: Any) -> float:
        steps.append(self.samples)
        return train_step(self, samples)

    monkeypatch.setattr(Trainer, "_train_step", counted)
    resumed = sparling.fit(path, tmp_path / "work", progress=False)
    assert steps == [16, 24, 32, 40]  # from the checkpoint at 16 samples on
    assert (resumed.status, resumed.samples) == (reference.status, reference.samples)
    assert resumed.density == reference.density
    assert _without_wall(resumed.history) == _without_wall(reference.history)
    assert len(folder.read_history()) == 3
