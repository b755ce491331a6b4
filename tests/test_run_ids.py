"""The committed result runs resume only while their run ids stay what they are: an id is
the hash of the run's config with the model preset resolved, so a new config or
architecture field, a changed default or a changed preset changes every id (and strands
the committed checkpoints). This pins the ids of the shipped DigitCircle result runs;
change it only together with the runs under results/digit-circle/runs/."""

from __future__ import annotations

from conftest import REPO

# (sweep method, seed) -> run id, as `sparling sweep ... --dry-run` lists them
PINNED = {
    ("sparling", 0): "b0b998827db6a8d8",
    ("sparling", 1): "d7abe1bbeafa1338",
    ("sparling", 2): "2f3ea72d15a62edd",
}


def test_the_shipped_result_runs_keep_their_ids() -> None:
    from pipelines.plan import load_sweep

    sweep = load_sweep(REPO / "pipelines" / "sweeps" / "digit-circle-result.yaml")
    ids = {(r.method, r.seed): r.config.run_id() for r in sweep.runs}
    assert {k: ids.get(k) for k in PINNED} == PINNED
