"""``bench/latex_extent.py``: the true motifs' ink boxes of LaTeX-OCR against g's context
radius."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import latex_extent  # noqa: E402


def test_boxes_are_measured_without_padding_and_fit_wider_windows(tmp_path: Path) -> None:
    out = tmp_path / "extent.json"
    assert latex_extent.main(["--samples", "12", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    from sparling import domains

    domain = domains.make("latex-ocr")
    motifs = [m for i in range(12) for m in domain.sample(0, i).motifs]
    assert sum(c["count"] for c in record["classes"].values()) == len(motifs)
    chars = record["characters"]
    assert chars["count"] == sum(1 for m in motifs if m.symbol != "\\frac{")
    # a glyph at 10 pt and 200 dpi is about 20 pixels tall, not 24 (box_pad taken off)
    assert 15 <= chars["height_px"]["p50"] <= 22
    fits = [chars["whole_within_radius"][str(r)] for r in latex_extent.RADII]
    assert fits == sorted(fits) and fits[-1] == 1.0 and fits[0] < 0.5
    if "\\frac{" in record["classes"]:  # a rule one pixel high
        assert record["classes"]["\\frac{"]["height_px"]["max"] <= 2


def test_a_bad_sample_count_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        latex_extent.main(["--samples", "0"])
    assert "--samples must be at least 1 (got 0)" in capsys.readouterr().err
