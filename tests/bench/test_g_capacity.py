"""``bench/g_capacity.py``: the supervised probe of how well ``g`` names each digit."""

from __future__ import annotations

import json
import sys

import torch
from conftest import REPO, run_python

sys.path.insert(0, str(REPO / "bench"))
import g_capacity  # noqa: E402

from sparling import domains  # noqa: E402


def test_box_logits_are_each_channels_maximum_over_the_box() -> None:
    d = domains.make("digit-circle", split="val")
    samples = [d.sample(0, i) for i in range(2)]
    maps = torch.zeros(2, 10, 100, 100)
    first = samples[0].motifs[0]
    rows, cols = first.slices
    maps[0, 7, rows.start, cols.stop - 1] = 5.0  # inside the first box, at its edge
    maps[0, 3, rows.stop, cols.stop] = 9.0  # just outside it
    logits, labels, counts = g_capacity.box_logits(maps, samples)
    assert counts == [len(s.motifs) for s in samples] and logits.shape == (sum(counts), 10)
    assert logits[0].tolist() == [0.0] * 7 + [5.0, 0.0, 0.0]
    assert labels.tolist() == [int(m.symbol) for s in samples for m in s.motifs]


def test_probe_writes_its_curve() -> None:
    label = "test-g-capacity"
    record = g_capacity.RECORDS / f"{label}.json"
    try:
        done = run_python(
            *["bench/g_capacity.py", "--width", "4", "--cr", "2", "--samples", "16"],
            *["--eval-every", "8", "--val-size", "4", "--batch", "8", "--label", label],
        )
        assert done.returncode == 0, done.stderr
        curve = json.loads(record.read_text())["curve"]
        assert [r["samples"] for r in curve] == [8, 16]
        assert all(0 <= r["box_accuracy"] <= 1 for r in curve)
    finally:
        record.unlink(missing_ok=True)
