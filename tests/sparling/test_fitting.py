"""``sparling.fit``: one run in this process, in its run folder; resumed, then looked up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import tiny_config

import sparling
from sparling.checkpoint import load_checkpoint, read_meta
from sparling.config import load_config
from sparling.runs import Continuation, RunFolder, ShorterBudgetRuns
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

    steps = _counting_steps(monkeypatch)
    resumed = sparling.fit(path, tmp_path / "work", progress=False)
    assert steps == [16, 24, 32, 40]  # from the checkpoint at 16 samples on
    assert (resumed.status, resumed.samples) == (reference.status, reference.samples)
    assert resumed.density == reference.density
    assert _without_wall(resumed.history) == _without_wall(reference.history)
    assert len(folder.read_history()) == 3


def _same(a: Any, b: Any) -> bool:
    """Whether two (nested) states hold the same values, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _counting_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sample count at each training step from now on."""
    steps: list[int] = []
    train_step = Trainer._train_step

    def counted(self: Trainer, samples: Any) -> float:
        steps.append(self.samples)
        return train_step(self, samples)

    monkeypatch.setattr(Trainer, "_train_step", counted)
    return steps


def test_a_larger_budget_continues_the_shorter_run_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    short, long = tiny_config(), tiny_config(budget_samples=80)
    reference = sparling.fit(long, tmp_path / "reference", progress=False)
    first = sparling.fit(short, tmp_path / "work", progress=False)
    short_folder = RunFolder.for_config(load_config(short), tmp_path / "work")
    before = short_folder.read_result()

    steps = _counting_steps(monkeypatch)
    longer = sparling.fit(long, tmp_path / "work", progress=False)
    assert steps == [48, 56, 64, 72]  # from the shorter run's last checkpoint on
    assert longer.status == reference.status and longer.samples == 80
    assert _without_wall(longer.history) == _without_wall(reference.history)
    assert _without_wall(longer.history[:3]) == _without_wall(first.history)
    folder = RunFolder.for_config(load_config(long), tmp_path / "work")
    assert folder.read_history() == longer.history
    ours, _ = load_checkpoint(folder.last)
    theirs, _ = load_checkpoint(RunFolder(reference.run_dir).last)
    assert _same(ours["model"], theirs["model"])
    # the shorter run is left as it was
    assert short_folder.read_result() == before
    assert read_meta(short_folder.last)["run_id"] == short_folder.run_id


def test_a_run_is_not_continued_from_one_that_differs_in_more_than_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # validated at its budget of 40, between two validation points (16, 32, 48...)
    sparling.fit(tiny_config(budget_samples=40), tmp_path, progress=False)
    sparling.fit(tiny_config(seed=1), tmp_path, progress=False)  # another seed
    steps = _counting_steps(monkeypatch)
    sparling.fit(tiny_config(budget_samples=64), tmp_path, progress=False)
    assert steps[0] == 0
    # a run with less budget than the checkpoint's samples trains from scratch too
    steps.clear()
    sparling.fit(tiny_config(budget_samples=32), tmp_path, progress=False)
    assert steps[0] == 0


def test_one_index_finds_the_furthest_shorter_run_for_every_run_and_reads_each_config_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sparling.fit(tiny_config(), tmp_path, progress=False)  # to 48 samples
    sparling.fit(tiny_config(budget_samples=64), tmp_path, progress=False)  # continues, to 64
    furthest = RunFolder.for_config(load_config(tiny_config(budget_samples=64)), tmp_path)
    reads: list[Path] = []
    read_config = RunFolder.read_config

    def counted(self: RunFolder) -> Any:
        reads.append(self.path)
        return read_config(self)

    monkeypatch.setattr(RunFolder, "read_config", counted)
    index = ShorterBudgetRuns(furthest.path.parent)
    assert len(reads) == 2  # the two runs, once each
    for budget in (80, 96):
        cfg = load_config(tiny_config(budget_samples=budget))
        found = index.source_for(RunFolder.for_config(cfg, tmp_path), cfg)
        assert found is not None and (found.source.path, found.samples) == (furthest.path, 64)
        assert found.message("run x", budget) == (
            f"run x: continues run {furthest.run_id} from its checkpoint at sample 64 "
            f"(the same config with a smaller budget), to {budget}"
        )
    other_seed = load_config(tiny_config(seed=1, budget_samples=96))
    assert index.source_for(RunFolder.for_config(other_seed, tmp_path), other_seed) is None
    # a run that has its own checkpoint continues nothing
    assert index.source_for(furthest, load_config(tiny_config(budget_samples=64))) is None
    assert len(reads) == 2


def test_a_larger_budget_takes_the_result_of_a_shorter_run_that_ended_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    short = sparling.fit(tiny_config(), tmp_path, progress=False)
    source = RunFolder(short.run_dir)
    # as if AST had reached its target at the last validation (48 samples), within budget
    summary = json.loads(source.result_path.read_text())
    summary["status"] = "target-reached"
    source.result_path.write_text(json.dumps(summary))

    steps = _counting_steps(monkeypatch)
    longer = sparling.fit(tiny_config(budget_samples=96), tmp_path, progress=False)
    assert steps == []  # more budget would end it the same way: nothing to train
    assert (longer.status, longer.samples) == ("target-reached", 48)
    assert longer.history == short.history and longer.run_dir != short.run_dir
    record = RunFolder(longer.run_dir).read_result()
    assert record is not None and record["continued_from"] == source.run_id
    assert read_meta(RunFolder(longer.run_dir).last)["continued_from"] == source.run_id
    # a collapsed run too; a run that failed in some other way is not taken
    summary["status"] = "failed"
    source.result_path.write_text(json.dumps(summary))
    cfg = load_config(tiny_config(budget_samples=128))
    assert ShorterBudgetRuns(tmp_path / "runs").source_for(
        RunFolder.for_config(cfg, tmp_path), cfg
    ) == Continuation(RunFolder(longer.run_dir), 48, "target-reached")
    summary["status"] = "collapsed"
    source.result_path.write_text(json.dumps(summary))
    found = ShorterBudgetRuns(tmp_path / "runs").source_for(
        RunFolder.for_config(cfg, tmp_path), cfg
    )
    assert found is not None and found.samples == 48 and found.ended is not None
    assert "its result is this run's" in found.message("run x", 128)
