"""MLflow metric names: every value a run records has a name grouped by ``/``, and runs
tracked under the older names read the same."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from conftest import tiny_config

from pipelines.sync import validation_points
from pipelines.tracking.metrics import (
    METRICS,
    OLD_NAMES,
    RECORD_TO_METRIC,
    canonical_metrics,
    has_metric,
    mlflow_metrics,
    names_of,
    read_metric,
)


def test_a_validation_record_is_logged_under_grouped_names(tmp_path: Path) -> None:
    from sparling import domains
    from sparling.config import load_config
    from sparling.train import Callbacks, make_trainer

    d_train = domains.make("digit-circle", split="train")
    d_val = domains.make("digit-circle", split="val")
    records: list[dict[str, Any]] = []
    cfg = load_config(tiny_config(**{"budget_samples": 16, "val_interval": 16}))
    trainer = make_trainer(
        cfg,
        [d_train.sample(0, i) for i in range(8)],
        [d_val.sample(0, i) for i in range(8)],
        tmp_path / "run",
        callbacks=Callbacks(on_validation=lambda record, _ckpt: records.append(record)),
        progress=False,
    )
    trainer.fit()
    [record] = records
    # a density step adds the motif errors to the record
    record = {**record, **trainer.motif_scores(samples=8)}
    numeric = {k for k, v in record.items() if isinstance(v, int | float)} - {"samples"}
    assert numeric <= set(RECORD_TO_METRIC), numeric - set(RECORD_TO_METRIC)
    points = validation_points(record)
    assert set(points) == {
        "train/loss",
        "val/exact_match",
        "val/e2ee",
        "val/density",
        "motif/fpe",
        "motif/fne",
        "motif/ce",
        "schedule/density",
        "schedule/threshold",
        "schedule/next_density",
        "time/wall_seconds",
    }
    assert points["val/exact_match"] == record["val_accuracy"]
    assert points["schedule/density"] == record["density"]


def test_evaluation_metrics_are_logged_under_test_names() -> None:
    evaluation = {
        "test_fpe": 0.1,
        "test_fne": 0.2,
        "test_ce": 0.3,
        "test_e2ee": 0.05,
        "test_accuracy": 0.9,
        "test_density": 5e-5,
        "test_checkpoint_density": 5e-5,
        "test_checkpoint_samples": 96000.0,
        "test_reached_reported": 1.0,
        "total_wall_seconds": 3600.0,
    }
    logged = mlflow_metrics(evaluation)
    assert logged["test/exact_match"] == 0.9 and logged["test/ce"] == 0.3
    assert logged["time/total_wall_seconds"] == 3600.0
    assert all(k.startswith("test/") for k in logged if k != "time/total_wall_seconds")
    # a checkpoint name (text) and the step are not metrics
    assert mlflow_metrics({"samples": 16, "density_checkpoint": "density-0.5"}) == {}


def test_every_name_is_grouped_and_maps_back_to_one_old_name() -> None:
    assert all("/" in n for n in METRICS) and len(set(METRICS)) == len(METRICS)
    assert len(OLD_NAMES) == len(RECORD_TO_METRIC)  # no two old names share a new one
    assert names_of("val/exact_match") == ("val/exact_match", "val_accuracy")
    assert names_of("system/cpu_utilization_percentage") == ("system/cpu_utilization_percentage",)


def test_old_new_and_mixed_runs_read_the_same() -> None:
    old = {"test_ce": 0.3, "val_accuracy": 0.9, "wall_seconds": 12.0, "loss": 1.0}
    new = {"test/ce": 0.3, "val/exact_match": 0.9, "time/wall_seconds": 12.0, "loss": 1.0}
    for metrics in (old, new):
        assert read_metric(metrics, "test/ce") == 0.3
        assert has_metric(metrics, "val/exact_match")
        assert not has_metric(metrics, "test/fpe")
        assert math.isnan(read_metric(metrics, "test/fpe"))
        assert canonical_metrics(metrics) == new
    # resumed across the rename: the new name's value wins, the old one is dropped
    mixed = {"val_accuracy": 0.5, "val/exact_match": 0.9, "test_ce": 0.3}
    assert read_metric(mixed, "val/exact_match") == 0.9
    assert canonical_metrics(mixed) == {"val/exact_match": 0.9, "test/ce": 0.3}


# -- train/ points every N optimizer steps ------------------------------------------------


def _progress(tmp_path: Path, name: str, **updates: Any) -> list[dict[str, Any]]:
    """Every ``on_progress`` info of a tiny run of 6 steps of 8 samples."""
    from sparling import domains
    from sparling.config import load_config
    from sparling.train import Callbacks, make_trainer

    d_train = domains.make("digit-circle", split="train")
    d_val = domains.make("digit-circle", split="val")
    infos: list[dict[str, Any]] = []
    cfg = load_config(
        tiny_config(**{"budget_samples": 48, "val_interval": 48, "optim.lr": 1e-3, **updates})
    )
    make_trainer(
        cfg,
        [d_train.sample(0, i) for i in range(16)],
        [d_val.sample(0, i) for i in range(8)],
        tmp_path / name,
        callbacks=Callbacks(on_progress=infos.append),
        progress=False,
    ).fit()
    return infos


def test_each_step_reports_its_learning_rate_and_gradient_norm(tmp_path: Path) -> None:
    import pytest

    warm = _progress(tmp_path, "warm", **{"optim.warmup_samples": 32, "optim.grad_clip": 1e-6})
    assert [i["samples"] for i in warm] == [8, 16, 24, 32, 40, 48]
    # linear warm-up over 32 samples: the lr of the step that trains samples s..s+8
    assert [i["lr"] for i in warm] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert all(math.isfinite(i["grad_norm"]) and i["grad_norm"] > 1e-3 for i in warm)
    # the norm is taken before clipping: without clipping, the first step (same seed, same
    # batch, same weights) has the same norm
    free = _progress(tmp_path, "free", **{"optim.warmup_samples": 32, "optim.grad_clip": None})
    assert free[0]["grad_norm"] == pytest.approx(warm[0]["grad_norm"], rel=1e-5)
    assert free[1]["grad_norm"] != pytest.approx(warm[1]["grad_norm"], rel=1e-3)


def test_train_points_every_n_steps_at_their_sample_count() -> None:
    import pytest

    from pipelines.sync import TrainPoints

    points = TrainPoints(every=2, batch=8)
    infos = [{"samples": 8 * k, "loss": 1.0 / k, "lr": 1e-3, "grad_norm": k} for k in range(1, 7)]
    logged = {i["samples"]: points(i) for i in infos if points(i) is not None}
    assert list(logged) == [16, 32, 48]
    assert logged[32] == {"train/loss": 0.25, "train/lr": 1e-3, "train/grad_norm": 4.0}
    # counted from the run's start: a run resumed at sample 24 logs the same steps
    assert [i["samples"] for i in infos[3:] if points(i) is not None] == [32, 48]
    # data parallel: the global batch (2 workers of 8) makes a step 16 samples
    wide = TrainPoints(every=2, batch=16)
    assert [s for s in (16, 32, 48, 64) if wide({"samples": s, "loss": 0.0})] == [32, 64]
    with pytest.raises(ValueError, match="at least 1"):
        TrainPoints(every=0, batch=8)
