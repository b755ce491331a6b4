"""``bench/bench_autoscale.py``: runs at once from the run folders, and the fake cluster's
autoscaling config."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import bench_autoscale  # noqa: E402
from autoscaling_cluster import FAKE_PROVIDER, WORKER_TYPE, cluster_config  # noqa: E402


def test_most_at_once_counts_overlaps_not_touching_ends() -> None:
    assert bench_autoscale.most_at_once([]) == 0
    assert bench_autoscale.most_at_once([(0, 2), (1, 3), (2.5, 4)]) == 2
    assert bench_autoscale.most_at_once([(0, 1), (1, 2), (2, 3)]) == 1
    assert bench_autoscale.most_at_once([(0, 10), (1, 2), (3, 4), (3.5, 5)]) == 3


def write_run(runs: Path, key: str, worker_start: float, end: float, wall: float) -> None:
    folder = runs / key
    folder.mkdir(parents=True)
    result = folder / "result.json"
    result.write_text(json.dumps({"wall_seconds": wall, "node_id": f"node-{key}"}))
    os.utime(result, (end, end))
    progress = {"state": "finished", "startup": {"worker_start": worker_start}}
    (folder / "progress.json").write_text(json.dumps(progress))


def test_run_intervals_go_from_the_worker_start_to_the_result(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_run(runs, "a", worker_start=100.0, end=110.0, wall=4.0)
    write_run(runs, "b", worker_start=105.0, end=120.0, wall=5.0)
    (runs / "c").mkdir()  # started, not finished: no interval
    (runs / "d").mkdir()
    (runs / "d" / "result.json").write_text(json.dumps({"wall_seconds": 3.0}))
    os.utime(runs / "d" / "result.json", (200.0, 200.0))  # no progress.json: wall_seconds
    intervals = bench_autoscale.run_intervals(tmp_path)
    assert sorted(intervals) == [(100.0, 110.0), (105.0, 120.0), (197.0, 200.0)]
    assert bench_autoscale.most_at_once(intervals) == 2
    assert bench_autoscale.nodes_used(tmp_path) == 2


def test_cluster_config_is_valid_for_the_autoscaler() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = cluster_config(
        "127.0.0.1:1234",
        {"CPU": 1},
        3,
        head_resources={"CPU": 0},
        idle_timeout_s=30,
        autoscaler_v2=True,
    )
    validate_config(prepare_config(config))  # what the autoscaler does with the file
    assert config["provider"]["module"] == FAKE_PROVIDER
    worker = config["available_node_types"][WORKER_TYPE]
    assert worker["min_workers"] == 0 and worker["max_workers"] == 3
    assert config["available_node_types"]["ray.head.default"]["resources"] == {"CPU": 0}
    assert config["idle_timeout_minutes"] == 0.5
