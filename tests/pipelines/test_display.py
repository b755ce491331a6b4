"""The local executor's progress line for one run (pipelines.display.describe_progress)."""

from __future__ import annotations

from pipelines.display import describe_progress


def test_adaptive_run_shows_schedule_density_and_bar() -> None:
    info = {
        "samples": 6000,
        "density": 5.0e-4,
        "val_accuracy": 0.25,
        "threshold": 0.9,
        "val_density": 4.9e-4,
        "adaptive": True,
    }
    assert describe_progress("r", info) == "r @6000 density 5.00e-04 acc 0.250 bar 0.900"


def test_run_not_driven_by_ast_shows_measured_density_and_no_bar() -> None:
    # L1: the schedule's density and bar are computed but never applied to the model
    info = {
        "samples": 6000,
        "density": 5.0e-4,
        "val_accuracy": 0.25,
        "threshold": 0.9,
        "val_density": 0.37,
        "adaptive": False,
    }
    assert describe_progress("r", info) == "r @6000 measured density 3.70e-01 acc 0.250"
    # before its first validation there is no measured density to show
    assert describe_progress("r", {"samples": 64, "density": 5.0e-4, "adaptive": False}) == "r @64"


def test_progress_from_before_the_adaptive_key_reads_as_adaptive() -> None:
    assert describe_progress("r", {"samples": 10, "density": 0.5}) == "r @10 density 5.00e-01"
    assert describe_progress("r", {}) == "r starting"
