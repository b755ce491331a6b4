"""``bench/learning_curve.py``: exact match against samples, and the ideal motif maps."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_python

sys.path.insert(0, str(REPO / "bench"))
import learning_curve  # noqa: E402

from sparling import domains  # noqa: E402

TINY = ["--set", "d_model=32", "--set", "ff=64", "--set", "heads=2", "--set", "width=4"]
TINY += ["--set", "encoder_layers=1", "--set", "decoder_layers=1", "--set", "cr=2"]


def test_ideal_maps_mark_each_digit_in_its_channel() -> None:
    d = domains.make("digit-circle", split="val")
    samples = [d.sample(0, i) for i in range(3)]
    maps = learning_curve.ideal_maps(samples, 10, (100, 100))
    assert maps.shape == (3, 10, 100, 100)
    for i, s in enumerate(samples):
        assert int(maps[i].sum()) == len(s.tokens)
        for symbol, (rows, cols) in s.motifs:
            channel = maps[i, int(symbol)]
            assert channel.sum() == 1
            r, c = (channel > 0).nonzero()[0].tolist()
            assert rows.start <= r < rows.stop and cols.start <= c < cols.stop


def test_samples_to_levels() -> None:
    curve = [{"samples": 10, "exact_match": 0.2}, {"samples": 20, "exact_match": 0.6}]
    assert learning_curve.samples_to(curve, 0.5) == 20
    assert learning_curve.samples_to(curve, 0.95) is None


@pytest.mark.parametrize("setting", ["h-ideal", "sparling"])
def test_run_writes_the_curve_and_plot_draws_it(setting: str, tmp_path: Path) -> None:
    label = f"test-{setting}-{tmp_path.name}"
    record = learning_curve.RECORDS / f"{label}.json"
    try:
        done = run_python(
            *["bench/learning_curve.py", "run", setting, "--samples", "32"],
            *["--eval-every", "16", "--val-size", "8", "--batch", "8", "--label", label],
            *["--train-size", "16", *TINY],
        )
        assert done.returncode == 0, done.stderr
        result = json.loads(record.read_text())["results"][0]
        assert [p["samples"] for p in result["curve"]] == [16, 32]
        assert set(result["samples_to"]) == {"50%", "95%"}
        assert result["architecture"]["downstream"]["d_model"] == 32
        assert result["train_size"] == 16
        png = tmp_path / "curve.png"
        assert learning_curve.plot([record], png) == png and png.stat().st_size > 1000
    finally:
        record.unlink(missing_ok=True)


def test_noisy_maps_add_clutter_inside_boxes_and_out_deterministically() -> None:
    d = domains.make("digit-circle", split="val")
    samples = [d.sample(0, i) for i in range(4)]
    clean = learning_curve.ideal_maps(samples, 10, (100, 100))
    noisy = learning_curve.noisy_maps(samples, 10, (100, 100), 3, 20)
    again = learning_curve.noisy_maps(list(reversed(samples)), 10, (100, 100), 3, 20)
    assert (noisy == again.flip(0)).all()  # a function of each sample, not of its place
    assert (noisy >= clean).all() and ((noisy > 0) & (noisy <= 1)).sum() > (clean > 0).sum()
    for i, s in enumerate(samples):
        active = int((noisy[i] > 0).sum())
        # collisions may merge a few of them
        assert len(s.tokens) * 4 + 20 - 6 <= active <= len(s.tokens) * 4 + 20
        inside = 0
        for m in s.motifs:
            rows, cols = m.slices
            inside += int((noisy[i][:, rows, cols] > 0).sum())
        assert inside >= len(s.tokens) * 3  # the clean one and most of the extra ones
