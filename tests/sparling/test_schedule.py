"""Tests of the adaptive sparsity schedule (sparling.schedule)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from sparling.schedule import AdaptiveSparsitySchedule


def test_hand_computed_sequence() -> None:
    s = AdaptiveSparsitySchedule(target_density=0.1)
    assert (s.density, s.threshold, s.done) == (0.5, 1.0, False)
    # each step worked out by hand from docs/method.md section 3 (d_T = 1e-7 per sample)
    # T = 1 - 1e-7 * 20k = 0.998; 0.40 is not above: keep; T = max(0.998, 0.40)
    assert s.observe(20_000, 0.40) == 0.5
    assert s.threshold == pytest.approx(0.998)
    # T = 0.998 - 0.002 = 0.996; 0.997 > 0.996: density 0.375; T = 0.997
    assert s.observe(40_000, 0.997) == 0.375
    assert s.threshold == pytest.approx(0.997)
    # T = 0.997 - 0.001 (10k samples) = 0.996; 0.996 is not > 0.996: keep; T = 0.996
    assert s.observe(50_000, 0.996) == 0.375
    assert s.threshold == pytest.approx(0.996)
    # a long gap: T = 0.996 - 1e-7 * 1e6 = 0.896 < 0.9: reduce; T = 0.9
    assert s.observe(1_050_000, 0.9) == pytest.approx(0.28125)
    assert s.threshold == pytest.approx(0.9)
    # an even longer gap clamps T at min_threshold = 0, so any accuracy > 0 reduces
    assert s.observe(100_050_000, 0.01) == pytest.approx(0.2109375)
    assert s.threshold == pytest.approx(0.01)
    # accuracy 0 never beats a threshold >= 0
    assert s.observe(200_050_000, 0.0) == pytest.approx(0.2109375)
    assert s.threshold == 0.0
    assert (s.reductions, s.observations, s.samples_seen) == (3, 6, 200_050_000)


def test_same_samples_twice_means_no_decay() -> None:
    s = AdaptiveSparsitySchedule(target_density=0.1, initial_threshold=0.8)
    assert s.observe(0, 0.8) == 0.5  # equal is not above
    assert s.observe(0, 0.81) == 0.375
    assert s.threshold == 0.81


def test_threshold_clamped_to_min_and_max() -> None:
    s = AdaptiveSparsitySchedule(
        target_density=0.01,
        threshold_decay=1e-3,
        initial_threshold=0.9,
        min_threshold=0.6,
        max_threshold=0.95,
    )
    s.observe(1000, 0.5)  # 0.9 - 1.0 -> clamped to 0.6; 0.5 < 0.6
    assert (s.threshold, s.density) == (0.6, 0.5)
    s.observe(1000, 0.99)  # above: reduce; T = max(0.6, 0.99) = 0.99 (above max until next)
    assert (s.threshold, s.density) == (0.99, 0.375)
    s.observe(1010, 0.97)  # 0.99 - 0.01 = 0.98 -> clamped to 0.95; 0.97 > 0.95: reduce
    assert s.threshold == 0.97 and s.density == pytest.approx(0.28125)


def test_density_follows_paper_grid_and_done() -> None:
    s = AdaptiveSparsitySchedule(target_density=4.492e-05)  # DigitCircle
    samples = 0
    while not s.done:
        samples += 20_000
        s.observe(samples, 1.0)  # perfect accuracy always beats T (< 1 after decay)
    # stops at the first density below the target; the one before is the paper's reported one
    assert s.reductions == 33
    assert s.density == 0.5 * 0.75**33
    assert 0.5 * 0.75**32 == pytest.approx(5.022621e-05, rel=1e-6)
    assert s.density < 4.492e-05 < 0.5 * 0.75**32


def test_l1_coefficient_grows_as_density_shrinks() -> None:
    s = AdaptiveSparsitySchedule(target_density=0.01, initial_threshold=0.0)
    assert s.l1_coefficient(2.0) == 2.0
    s.observe(1, 0.5)
    s.observe(2, 0.6)
    assert s.density == 0.5 * 0.75**2
    assert s.l1_coefficient(2.0) == pytest.approx(2.0 / 0.75**2)
    with pytest.raises(ValueError, match="base"):
        s.l1_coefficient(-1.0)


def test_state_dict_round_trip() -> None:
    s = AdaptiveSparsitySchedule(target_density=0.01)
    for i, acc in enumerate([0.2, 0.999, 0.5, 0.9995]):
        s.observe(20_000 * (i + 1), acc)
    state = copy.deepcopy(s.state_dict())
    assert all(isinstance(v, int | float) for v in state.values())
    t = AdaptiveSparsitySchedule(target_density=0.01)
    t.load_state_dict(state)
    assert (t.density, t.threshold, t.samples_seen, t.reductions, t.observations) == (
        s.density,
        s.threshold,
        s.samples_seen,
        s.reductions,
        s.observations,
    )
    for samples, acc in [(100_000, 0.3), (120_000, 0.9999), (140_000, 0.99995)]:
        assert t.observe(samples, acc) == s.observe(samples, acc)
        assert t.threshold == s.threshold
    with pytest.raises(ValueError, match="must not decrease"):
        t.observe(120_000, 0.5)  # the restored sample count is enforced


def test_constructor_errors() -> None:
    with pytest.raises(TypeError):
        AdaptiveSparsitySchedule()  # type: ignore[call-arg]
    ok: dict[str, Any] = dict(target_density=0.01)
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        (dict(target_density=0.0), ValueError, "target_density must be in"),
        (dict(target_density=1.5), ValueError, "target_density must be in"),
        (dict(initial_density=0.0), ValueError, "initial_density must be in"),
        (dict(delta_update=1.0), ValueError, r"delta_update must be in \(0, 1\)"),
        (dict(delta_update=0.0), ValueError, r"delta_update must be in \(0, 1\)"),
        (dict(delta_update="0.5"), TypeError, "delta_update must be a real number"),
        (dict(threshold_decay=-1e-7), ValueError, "threshold_decay must be >= 0"),
        (dict(threshold_decay=float("nan")), ValueError, "threshold_decay must be finite"),
        (dict(min_threshold=-0.1), ValueError, "min_threshold must be in"),
        (dict(max_threshold=1.1), ValueError, "max_threshold must be in"),
        (dict(min_threshold=0.8, max_threshold=0.7, initial_threshold=0.75), ValueError, "min_"),
        (dict(initial_threshold=0.5, max_threshold=0.4), ValueError, "initial_threshold"),
    ]
    for change, error, message in cases:
        with pytest.raises(error, match=message):
            AdaptiveSparsitySchedule(**{**ok, **change})


def test_observe_errors_leave_state_unchanged() -> None:
    s = AdaptiveSparsitySchedule(target_density=0.01)
    s.observe(1000, 0.5)
    before = s.state_dict()
    cases = [
        ((500, 0.5), ValueError, "must not decrease"),
        ((-1, 0.5), ValueError, "samples_seen must be >= 0"),
        ((2000.0, 0.5), TypeError, "samples_seen must be an integer"),
        ((True, 0.5), TypeError, "samples_seen must be an integer"),
        ((2000, 1.01), ValueError, r"accuracy must be in \[0, 1\]"),
        ((2000, -0.01), ValueError, r"accuracy must be in \[0, 1\]"),
        ((2000, float("nan")), ValueError, "accuracy must be finite"),
        ((2000, None), TypeError, "accuracy must be a real number"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            s.observe(*args)  # type: ignore[arg-type]
    assert s.state_dict() == before


def test_load_state_dict_errors() -> None:
    s = AdaptiveSparsitySchedule(target_density=0.01)
    good = s.state_dict()
    with pytest.raises(ValueError, match="keys"):
        s.load_state_dict({"threshold": 1.0})
    with pytest.raises(ValueError, match="keys"):
        s.load_state_dict({**good, "extra": 1})
    with pytest.raises(ValueError, match="threshold"):
        s.load_state_dict({**good, "threshold": 2.0})
    with pytest.raises(ValueError, match="reductions"):
        s.load_state_dict({**good, "reductions": -1})
