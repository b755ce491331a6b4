"""The run folder: its paths, choosing a checkpoint by density, and its JSON records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from sparling import domains
from sparling.checkpoint import read_meta, save_checkpoint
from sparling.config import load_config
from sparling.runs import (
    RunFolder,
    density_checkpoint_name,
    init_from_density,
    read_json,
    select_checkpoint,
)
from sparling.train import RunResult

REPORTED = domains.make("digit-circle").reported_density


def _run_with_checkpoints(tmp_path: Path, densities: list[float]) -> RunFolder:
    """A run folder holding a config, ``last`` and a checkpoint at each of ``densities``."""
    config = load_config(tiny_config())
    folder = RunFolder.for_config(config, tmp_path)
    folder.write_config(config)
    for i, d in enumerate([*densities, None]):
        name = "last" if d is None else density_checkpoint_name(d)
        density = d if d is not None else densities[-1] if densities else 0.5
        meta = {"density": density, "samples": 16 * (i + 1)}
        save_checkpoint(folder.checkpoint(name), {"w": torch.zeros(1)}, meta, config.to_json())
    return folder


def test_paths(tmp_path: Path) -> None:
    config = load_config(tiny_config())
    folder = RunFolder.for_config(config, tmp_path)
    assert folder == RunFolder.of(config.run_id(), tmp_path)
    assert folder.path == (tmp_path / "runs" / config.run_id()).resolve()
    assert folder.run_id == config.run_id()
    assert folder.work_dir == tmp_path.resolve()
    names = {
        folder.config_path: "config.json",
        folder.result_path: "result.json",
        folder.progress_path: "progress.json",
        folder.history_path: "history.json",
        folder.spool_path: "metrics.spool.jsonl",
        folder.lock_path: "train.lock",
        folder.evaluation_path: "evaluation.json",
        folder.evaluation_dir: "evaluation",
        folder.failure_path: "failure.txt",
    }
    for path, name in names.items():
        assert path == folder.path / name
    assert folder.last == folder.path / "checkpoints" / "last"
    assert folder.checkpoint(density_checkpoint_name(0.5)).name == "density-5.000000e-01"
    # a checkpoint knows its run folder, and through it the work dir
    assert RunFolder.of_checkpoint(folder.last) == folder
    assert RunFolder.of_checkpoint(folder.last).work_dir == tmp_path.resolve()
    assert folder.sibling("0123456789abcdef") == RunFolder.of("0123456789abcdef", tmp_path)
    assert not folder.has_checkpoints() and not folder.has_checkpoint()


def test_checkpoint_selection_by_density(tmp_path: Path) -> None:
    folder = _run_with_checkpoints(tmp_path, [0.5, 0.375, 0.28125])
    assert folder.has_checkpoint() and folder.has_checkpoint(density_checkpoint_name(0.5))
    kept = folder.density_checkpoints()
    assert sorted(kept) == [0.28125, 0.375, 0.5]
    assert folder.density_checkpoint_folders() == sorted(kept.values())
    # the lowest density kept at or above the one asked for
    assert folder.select_checkpoint(0.5) == kept[0.5]
    assert folder.select_checkpoint(0.4) == kept[0.5]
    assert folder.select_checkpoint(0.3) == kept[0.375]
    assert folder.select_checkpoint(0.01) == kept[0.28125]
    with pytest.raises(ValueError, match="no checkpoint at density >= 0.6"):
        folder.select_checkpoint(0.6)
    # without a density: the reported one was not reached, so the lowest kept
    assert REPORTED < 0.28125
    assert folder.select_checkpoint() == kept[0.28125]
    # a run folder or a checkpoint folder
    assert select_checkpoint(folder.path, 0.3) == kept[0.375]
    assert select_checkpoint(kept[0.5]) == kept[0.5]
    with pytest.raises(ValueError, match="pass the run folder"):
        select_checkpoint(kept[0.5], 0.3)
    with pytest.raises(FileNotFoundError, match="neither a run folder nor a checkpoint"):
        select_checkpoint(tmp_path / "elsewhere")


def test_the_reported_density_is_chosen_once_reached(tmp_path: Path) -> None:
    folder = _run_with_checkpoints(tmp_path, [0.5, REPORTED, REPORTED * 0.75])
    kept = folder.density_checkpoints()
    assert folder.select_checkpoint() == kept[REPORTED]
    # a damaged density checkpoint is skipped: the next one at or above the reported density
    (kept[REPORTED] / "meta.json").unlink()
    assert REPORTED not in folder.density_checkpoints()
    assert folder.select_checkpoint() == kept[0.5]


def test_a_run_without_density_checkpoints_chooses_last(tmp_path: Path) -> None:
    folder = _run_with_checkpoints(tmp_path, [])
    assert folder.density_checkpoints() == {}
    assert folder.select_checkpoint() == folder.last


def test_the_selected_density_counts_the_density_checkpoints_whose_folders_were_deleted(
    tmp_path: Path,
) -> None:
    densities = [0.5, REPORTED, REPORTED * 0.75]
    folder = _run_with_checkpoints(tmp_path, densities)
    folder.write_history(
        [
            {
                "samples": 16 * (i + 1),
                "density": d,
                "density_checkpoint": density_checkpoint_name(d),
            }
            for i, d in enumerate(densities)
        ]
        + [{"samples": 64, "density": REPORTED * 0.75}]  # no checkpoint written there
    )
    assert folder.selected_density() == REPORTED
    assert folder.selected_density(0.3) == 0.5
    # a repository keeps only last: the rule still sees what the run wrote
    for kept in folder.density_checkpoint_folders():
        shutil.rmtree(kept)
    assert folder.select_checkpoint() == folder.last
    assert folder.selected_density() == REPORTED
    assert folder.selected_density(0.3) == 0.5
    assert folder.selected_density(REPORTED * 0.5) == REPORTED * 0.75
    # a Retrained run beside it is tested at that density, not at last's
    other = folder.sibling("0123456789abcdef").path
    assert read_meta(folder.last)["density"] == REPORTED * 0.75
    assert init_from_density(f"run:{folder.run_id}", other) == REPORTED
    assert init_from_density(f"run:{folder.run_id}@density=0.3", other) == 0.5
    # a run that wrote no density checkpoint: last's density
    folder.write_history([{"samples": 16, "density": 0.5}])
    assert folder.selected_density() == REPORTED * 0.75


def test_records_round_trip(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run")
    assert folder.read_result() is None and folder.read_progress() is None
    assert folder.read_history() == [] and folder.read_evaluation() is None
    folder.path.mkdir()
    history = [
        {"samples": 16, "density": 0.5, "val_accuracy": 0.25, "density_checkpoint": "x"},
        {"samples": 32, "density": 0.375, "val_accuracy": 0.5, "skipped": [1, 2]},
    ]
    result = RunResult("budget-exhausted", 32, 0.375, history, {"5.000000e-01": "x"})
    summary = folder.write_result(result, node_ip="here")
    assert folder.read_result() == summary == json.loads(folder.result_path.read_text())
    assert summary["validations"] == 2 and summary["last"] == history[-1]
    assert summary["node_ip"] == "here" and summary["density_checkpoints"] == {"5.000000e-01": "x"}
    # history.json keeps each record's numbers and strings
    folder.write_history(history)
    assert folder.read_history() == [
        history[0],
        {k: v for k, v in history[1].items() if k != "skipped"},
    ]
    assert folder.history_path.read_text().endswith("]\n")
    folder.write_progress({"samples": 16, "state": "running"})
    assert folder.read_progress() == {"samples": 16, "state": "running"}
    folder.write_evaluation({"test_e2ee": 0.5})
    assert folder.read_evaluation() == {"test_e2ee": 0.5}
    # an evaluation written when the run's total wall time was named wall_seconds (each
    # validation's metric) reads under the total's name
    folder.write_evaluation({"test_e2ee": 0.5, "wall_seconds": 12.5})
    assert folder.read_evaluation() == {"test_e2ee": 0.5, "total_wall_seconds": 12.5}
    # a file being written (not JSON yet) reads as absent
    folder.progress_path.write_text('{"samples": 1')
    assert folder.read_progress() is None and read_json(folder.progress_path) is None
    folder.history_path.write_text('{"samples": 1}')
    assert folder.read_history() == []
    # what a copy of the run's results takes: neither checkpoints nor the lock
    folder.lock_path.write_text("")
    save_checkpoint(folder.last, {"w": torch.zeros(1)}, {"density": 0.5}, "{}")
    assert [p.name for p in folder.records()] == [
        "evaluation.json",
        "history.json",
        "progress.json",
        "result.json",
    ]
