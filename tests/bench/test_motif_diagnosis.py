"""``bench/motif_diagnosis.py``: error kinds and where the activations are."""

from __future__ import annotations

import sys

import torch
from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import motif_diagnosis  # noqa: E402

from sparling import domains  # noqa: E402
from sparling.models import build_model  # noqa: E402


def test_diagnosis_counts_activations_in_boxes_and_sorts_errors() -> None:
    torch.manual_seed(0)
    domain = domains.make("digit-circle", split="val")
    small = dict(d_model=32, ff=64, heads=2, width=4, encoder_layers=1, decoder_layers=1, cr=2)
    model = build_model(domain, "fast", "sparling", {"density": 0.01}, **small).eval()
    samples = [domain.sample(0, i) for i in range(6)]
    record = motif_diagnosis.diagnose(model, samples, batch=4)
    assert record["samples"] == 6
    assert abs(sum(record["decoded"].values()) - 1) < 1e-9
    assert 0 < record["activations_per_image"] <= 10 * 100 * 100
    inside = sum(map(sum, record["digit_by_channel"]))
    assert inside == round(record["share_inside_boxes"] * record["activations_per_image"] * 6)
    assert 0 <= record["digits_with_an_activation"] <= 1
    medians = record["median_value_digit_by_channel"]
    for counts, row in zip(record["digit_by_channel"], medians):
        for count, median in zip(counts, row):
            assert (median is None) == (count == 0)
            assert median is None or median > 0  # surviving activations are positive
