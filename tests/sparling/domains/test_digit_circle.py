"""DigitCircle: contract, determinism, ground truth, stamps, validation and statistics.

The statistical tests use fixed seeds, so they are deterministic; their tolerances are
4-5 standard errors of the quantity measured, so a correct generator passes with any
seeds while a wrong noise rate or geometry (off by more than a few percent) fails.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SHARED
from scipy import stats

from sparling import domains
from sparling.domains import stamps as stamps_mod
from sparling.domains.base import Domain
from sparling.domains.base import reported_density as reported_density_of
from sparling.domains.digit_circle import DigitCircle, Layout, reference_sample

PAPER_STAMPS = (SHARED / "reference" / "digit_circle_stamps_paper.npz").resolve()
needs_paper_stamps = pytest.mark.skipif(
    not PAPER_STAMPS.is_file(),
    reason=f"the paper's stamp set is not at {PAPER_STAMPS} (shared reference data absent)",
)

NOISE_FREE: dict[str, Any] = {"pre_noise": 0.0, "post_noise": 0.0}


def dc(split: str = "train", **params: Any) -> DigitCircle:
    """``domains.make("digit-circle", ...)``, typed as the concrete class."""
    d = domains.make("digit-circle", split=split, **params)
    assert isinstance(d, DigitCircle)
    return d


def union_of_boxes(lay: Layout, size: int = 100) -> np.ndarray:
    covered = np.zeros((size, size), dtype=bool)
    for box in lay.boxes:
        covered[box] = True
    return covered


# -- contract and properties -------------------------------------------------------------


def test_registered_and_descriptive_properties() -> None:
    assert "digit-circle" in domains.names()
    d = dc()
    assert isinstance(d, DigitCircle)
    assert (d.name, d.kind, d.storage) == ("digit-circle", "image", "bits")
    assert d.vocabulary == [str(i) for i in range(10)]
    assert d.motif_symbols == [str(i) for i in range(10)]
    assert d.paper_channels == 10
    assert d.expected_motifs == 4.5
    assert d.input_shape == (100, 100)
    assert d.target_density == pytest.approx(4.5e-05, rel=1e-12)
    assert d.reported_density == pytest.approx(0.5 * 0.75**32, rel=1e-12)
    assert f"{d.reported_density:.6e}" == "5.022621e-05"
    # The paper's hard-coded stop density (a 1,000-sample estimate of 4.5 digits) lands on
    # the same reported density.
    assert reported_density_of(4.492e-05) == d.reported_density


def test_params_defaults_are_the_papers_and_documented() -> None:
    p = DigitCircle.Params.model_validate({})
    assert p.model_dump() == {
        "size": 100,
        "min_digits": 3,
        "max_digits": 6,
        "max_shift": 3,
        "pre_noise": 0.5,
        "post_noise": 0.05,
        "min_radius": 20,
        "stamps": None,
    }
    assert DigitCircle.Params.__doc__
    for name, field in DigitCircle.Params.model_fields.items():
        assert field.description, f"parameter {name} has no description"


def test_expected_motifs_follows_params() -> None:
    d = dc(min_digits=2, max_digits=9)
    assert d.expected_motifs == 5.5
    assert d.target_density == pytest.approx(5.5 / (100 * 100 * 10))


def test_sample_format() -> None:
    d = dc()
    s = d.sample(seed=0, index=0)
    assert s.x.shape == (100, 100) and s.x.dtype == np.bool_
    assert all(t in d.vocabulary for t in s.tokens)
    assert [m.symbol for m in s.motifs] == s.tokens
    for m in s.motifs:
        symbol, slices = m  # the contract says a Motif unpacks like this
        assert len(slices) == 2 and all(isinstance(sl, slice) for sl in slices)
        assert all(isinstance(v, int) for sl in slices for v in (sl.start, sl.stop))


def test_rng_is_the_base_stream() -> None:
    """The faster ``rng`` override must not change the stream ``Domain.rng`` defines."""
    d = dc("val")
    for seed, index in [(0, 0), (7, 123456), (2**40 + 3, 5)]:
        mine = d.rng(seed, index).random(8)
        base = Domain.rng(d, seed, index).random(8)
        assert np.array_equal(mine, base)


# -- determinism ---------------------------------------------------------------------------


def test_same_inputs_give_identical_samples() -> None:
    a, b = dc(), dc()
    for index in range(20):
        s, t = a.sample(3, index), b.sample(3, index)
        assert s.x.tobytes() == t.x.tobytes()
        assert s.tokens == t.tokens and s.motifs == t.motifs
    # and after a pickle round trip (Ray ships domains to workers)
    c = pickle.loads(pickle.dumps(a))
    assert c.sample(3, 11).x.tobytes() == a.sample(3, 11).x.tobytes()


def test_different_seeds_indices_and_splits_differ() -> None:
    train, test = dc(), dc("test")
    images = {train.sample(0, i).x.tobytes() for i in range(30)}
    images |= {train.sample(1, i).x.tobytes() for i in range(30)}
    images |= {test.sample(0, i).x.tobytes() for i in range(30)}
    assert len(images) == 90


# -- ground truth --------------------------------------------------------------------------


def test_ground_truth_without_noise() -> None:
    """With both noises off, the image is exactly the stamps in their boxes."""
    d = dc(**NOISE_FREE)
    stamp_set = d.stamps
    counts = set()
    for index in range(400):
        s, lay = d.sample_with_layout(0, index)
        n = len(s.tokens)
        counts.add(n)
        assert 3 <= n <= 6
        assert len(set(s.tokens)) == n, "digits must be distinct"
        # tokens: placement (circle) order rotated so that the smallest digit is first
        placed = [str(k) for k in lay.digits]
        assert s.tokens[0] == min(s.tokens)
        first = placed.index(min(placed))
        assert s.tokens == placed[first:] + placed[:first]
        assert [m.symbol for m in s.motifs] == s.tokens
        assert list(lay.turns) == sorted(lay.turns), "placement order is circle order"

        # slices are unhashable before Python 3.12: key boxes by their bounds
        def key(box: tuple[slice, ...]) -> tuple[int, ...]:
            return tuple(v for sl in box for v in (sl.start, sl.stop))

        by_box = {key(m.slices): m.symbol for m in s.motifs}
        assert set(by_box) == {key(box) for box in lay.boxes}
        later_cover = np.zeros((100, 100), dtype=bool)
        for box in reversed(lay.boxes):  # last placed first
            symbol = by_box[key(box)]
            rows, cols = box
            assert 0 <= rows.start < rows.stop <= 100 and 0 <= cols.start < cols.stop <= 100
            assert (rows.stop - rows.start, cols.stop - cols.start) == stamp_set[symbol].shape
            # the box holds its stamp, except where a later digit's box overwrote it
            visible = ~later_cover[box]
            assert np.array_equal(s.x[box][visible], stamp_set[symbol][visible])
            later_cover[box] = True
        assert not s.x[~later_cover].any(), "no ink outside the boxes without noise"
    assert counts == {3, 4, 5, 6}


def test_noise_changes_pixels_but_not_the_ground_truth() -> None:
    noisy, clean = dc(), dc(**NOISE_FREE)
    for index in range(50):
        s, lay = noisy.sample_with_layout(5, index)
        c, clay = clean.sample_with_layout(5, index)
        assert lay == clay and s.tokens == c.tokens and s.motifs == c.motifs
        assert not np.array_equal(s.x, c.x)


def test_layout_geometry_matches_the_definition() -> None:
    d = dc()
    pad = 3 + 12  # max_shift + largest stamp side (12 rows)
    radii = []
    for index in range(1000):
        lay = d.sample_with_layout(9, index)[1]
        n, r, (cy, cx) = len(lay.digits), lay.radius, lay.center
        radii.append(r)
        assert 20 <= r <= 100 // 2 - pad - 1
        assert r + pad <= cy < 100 - r - pad and r + pad <= cx < 100 - r - pad
        turns = np.array(lay.turns)
        gaps = np.diff(np.concatenate([turns, [turns[0] + 1]]))
        assert gaps.min() >= 1 / (2 * n) - 1e-12
        assert gaps.sum() == pytest.approx(1.0)
        for turn, (dy, dx), (rows, cols) in zip(turns, lay.shifts, lay.boxes):
            assert -3 <= dy <= 3 and -3 <= dx <= 3
            h, w = rows.stop - rows.start, cols.stop - cols.start
            on_circle_row = round(cy + r * math.cos(2 * math.pi * turn))
            on_circle_col = round(cx + r * math.sin(2 * math.pi * turn))
            assert (rows.start + h // 2, cols.start + w // 2) == (
                on_circle_row + dy,
                on_circle_col + dx,
            )
    assert set(radii) == set(range(20, 35))


def test_fast_and_reference_place_identically() -> None:
    d = dc()
    clean = dc(**NOISE_FREE)
    for index in range(200):
        s, lay = d.sample_with_layout(4, index)
        r, rlay = reference_sample(d, 4, index)
        assert lay == rlay and s.tokens == r.tokens and s.motifs == r.motifs
        # without noise the two implementations must draw the very same image
        assert np.array_equal(clean.sample(4, index).x, reference_sample(clean, 4, index)[0].x)


# -- stamps --------------------------------------------------------------------------------


def test_default_stamps_are_reproducible_from_the_font() -> None:
    stored = stamps_mod.load_stamps()
    fresh = stamps_mod.render_stamps()
    assert stamps_mod.same_stamps(stored, fresh), (
        "sparling/domains/assets/digit_stamps.npz no longer equals a fresh rendering "
        "(matplotlib/FreeType changed?); inspect and rerun `python -m sparling.domains.stamps`"
    )


def test_default_stamps_look_like_the_papers() -> None:
    st = stamps_mod.load_stamps()
    assert sorted(st) == [str(i) for i in range(10)]
    for digit, a in st.items():
        assert a.dtype == np.bool_ and a.shape[0] == 12 and 7 <= a.shape[1] <= 9, digit
        # one blank pixel of border on every side, ink touching it from inside
        assert not (a[0].any() or a[-1].any() or a[:, 0].any() or a[:, -1].any())
        assert a[1].any() and a[-2].any() and a[:, 1].any() and a[:, -2].any()
    assert len({a.tobytes() + bytes(a.shape) for a in st.values()}) == 10
    assert 0.2 < stamps_mod.ink_fraction(st) < 0.3


def test_stamps_cli_writes_the_same_set(tmp_path: Path) -> None:
    out = tmp_path / "s.npz"
    assert stamps_mod.main(["--out", str(out)]) == 0
    assert stamps_mod.same_stamps(stamps_mod.load_stamps(out), stamps_mod.load_stamps())
    assert stamps_mod.main(["--out", str(out), "--check"]) == 0


def test_custom_stamps_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    custom = {str(i): (rng.random((10, 6)) < 0.4).astype(np.uint8) for i in range(10)}
    path = tmp_path / "small.npz"
    np.savez(path, **custom)  # type: ignore[arg-type]
    d = dc(stamps=path, **NOISE_FREE)  # a Path is accepted and kept as a string
    assert d.params.stamps == str(path)
    assert d.spec()["params"]["stamps"].startswith("sha256:")
    assert d.ink_fraction == pytest.approx(np.mean([a.mean() for a in custom.values()]))
    s = d.sample(0, 1)
    for _, (rows, cols) in s.motifs:
        assert (rows.stop - rows.start, cols.stop - cols.start) == (10, 6)
    last = d.sample_with_layout(0, 1)[1]
    k, box = last.digits[-1], last.boxes[-1]
    assert np.array_equal(s.x[box], custom[str(k)].astype(bool))


def _write(path: Path, arrays: dict[str, np.ndarray]) -> str:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return str(path)


def test_bad_stamps_files_are_refused(tmp_path: Path) -> None:
    good = {str(i): np.ones((12, 8), dtype=bool) for i in range(10)}
    cases = {
        "missing": _write(tmp_path / "missing.npz", {k: v for k, v in good.items() if k != "7"}),
        "extra": _write(tmp_path / "extra.npz", {**good, "x": good["0"]}),
        "3d": _write(tmp_path / "3d.npz", {**good, "3": np.ones((2, 12, 8), bool)}),
        "float": _write(tmp_path / "float.npz", {**good, "4": np.ones((12, 8))}),
        "not01": _write(tmp_path / "not01.npz", {**good, "5": np.full((12, 8), 2, np.uint8)}),
        "empty": _write(tmp_path / "empty.npz", {**good, "6": np.zeros((0, 8), bool)}),
        "huge": _write(tmp_path / "huge.npz", {**good, "2": np.ones((40, 40), bool)}),
        "absent": str(tmp_path / "absent.npz"),
    }
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip file at all")
    cases["garbage"] = str(garbage)
    single = tmp_path / "single.npy"
    np.save(single, np.ones((12, 8), bool))
    cases["npy"] = str(single)
    for what, path in cases.items():
        with pytest.raises(ValueError) as info:
            domains.make("digit-circle", stamps=path)
        assert path in str(info.value), f"{what}: error does not name the file: {info.value}"
    with pytest.raises(ValueError, match=r'"0"\.\."9"'):
        stamps_mod.load_stamps(cases["missing"])
    with pytest.raises(ValueError, match="does not fit"):
        domains.make("digit-circle", stamps=cases["huge"])


# -- parameter validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"min_digits": 5, "max_digits": 4}, "min_digits"),
        ({"pre_noise": -0.1}, "pre_noise"),
        ({"post_noise": -0.01}, "post_noise"),
        ({"post_noise": 1.5}, "post_noise"),
        ({"max_digits": 11}, "max_digits"),
        ({"colour": "red"}, "colour"),
        ({"size": 50}, "does not fit"),
        ({"min_radius": 40}, "does not fit"),
        ({"pre_noise": 5.0}, "probability"),
    ],
)
def test_bad_params_are_refused(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        domains.make("digit-circle", **params)


def test_bad_split_is_refused() -> None:
    with pytest.raises(ValueError, match="split"):
        domains.make("digit-circle", split="dev")


# -- statistics against the paper's definition ------------------------------------------------


def _within(observed: float, expected: float, n: int, sds: float = 4.5) -> None:
    """Bernoulli mean over ``n`` trials within ``sds`` standard errors of ``expected``."""
    se = math.sqrt(expected * (1 - expected) / n)
    assert abs(observed - expected) <= sds * se, (observed, expected, se)


@needs_paper_stamps
def test_statistics_with_the_papers_stamps() -> None:
    paper = str(PAPER_STAMPS)
    d = dc(stamps=paper)
    clean = dc(stamps=paper, **NOISE_FREE)
    assert clean.ink_fraction == pytest.approx(0.250380291, abs=1e-9)
    p_pre, p_post = 0.5 * clean.ink_fraction, 0.05
    assert d.p_pre == pytest.approx(p_pre) and d.p_post == p_post
    n_samples = 2000

    counts, digit_hits, radii = [], np.zeros(10), []
    bg_ink = bg_total = box_flips = box_total = 0
    ink, expected_ink = [], []
    q = p_pre * (1 - p_post) + (1 - p_pre) * p_post
    for index in range(n_samples):
        s, lay = d.sample_with_layout(1, index)
        c = clean.sample(1, index).x
        covered = union_of_boxes(lay)
        counts.append(len(s.tokens))
        digit_hits[[int(t) for t in s.tokens]] += 1
        radii.append(lay.radius)
        bg_ink += int(s.x[~covered].sum())
        bg_total += int((~covered).sum())
        box_flips += int((s.x ^ c)[covered].sum())
        box_total += int(covered.sum())
        ink.append(s.x.mean())
        # expected ink given the layout: background at q, box pixels flipped at p_post
        stamp_ink = int(c[covered].sum())
        expected_ink.append(
            ((~covered).sum() * q + stamp_ink * (1 - p_post) + (covered.sum() - stamp_ink) * p_post)
            / c.size
        )

    # digits per image uniform on 3..6, each digit equally likely to appear
    per_count = np.bincount(counts, minlength=7)[3:]
    assert per_count.sum() == n_samples
    assert stats.chisquare(per_count).pvalue > 1e-3
    assert abs(np.mean(counts) - 4.5) < 4.5 * math.sqrt(1.25 / n_samples)
    assert stats.chisquare(digit_hits).pvalue > 1e-3
    assert digit_hits.sum() / n_samples / 10 == pytest.approx(np.mean(counts) / 10)
    # radius uniform on 20..34
    assert stats.chisquare(np.bincount(radii, minlength=35)[20:]).pvalue > 1e-3
    # noise: background pixels (outside every box) are ink at q = pre then post composed;
    # inside boxes, pixels differ from the clean stamp at the post-noise rate
    _within(bg_ink / bg_total, q, bg_total)
    _within(box_flips / box_total, p_post, box_total)
    # ink fraction: observed mean vs its expectation given each layout
    assert abs(np.mean(ink) - np.mean(expected_ink)) < 4.5 * np.std(ink) / math.sqrt(n_samples)


@needs_paper_stamps
@pytest.mark.parametrize("which", ["pre", "post"])
def test_each_noise_alone_with_the_papers_stamps(which: str) -> None:
    """Pre-noise alone sets background pixels to ink at 0.5 x 0.2504; post-noise alone
    flips them at 0.05 (and never touches the layout)."""
    params: dict[str, Any] = {"pre_noise": 0.0} if which == "post" else {"post_noise": 0.0}
    d = dc(stamps=str(PAPER_STAMPS), **params)
    expected = 0.05 if which == "post" else 0.5 * d.ink_fraction
    clean = dc(stamps=str(PAPER_STAMPS), **NOISE_FREE)
    bg_ink = bg_total = box_diff = box_total = 0
    for index in range(1000):
        s, lay = d.sample_with_layout(2, index)
        covered = union_of_boxes(lay)
        bg_ink += int(s.x[~covered].sum())
        bg_total += int((~covered).sum())
        box_diff += int((s.x ^ clean.sample(2, index).x)[covered].sum())
        box_total += int(covered.sum())
    _within(bg_ink / bg_total, expected, bg_total)
    if which == "pre":
        assert box_diff == 0, "pre-noise must be wiped by the stamps it falls under"
    else:
        _within(box_diff / box_total, 0.05, box_total)


def test_reference_implementation_agrees_in_distribution() -> None:
    """The literal two-field noise of ``reference_sample`` and the one-field fast path give
    the same background ink rate, in-box flip rate and ink fraction."""
    d = dc()
    clean = dc(**NOISE_FREE)
    q, p_post = d.p_background, d.p_post
    results = {}
    for name, draw in [
        ("fast", lambda i: d.sample(6, i).x),
        ("reference", lambda i: reference_sample(d, 6, i)[0].x),
    ]:
        bg_ink = bg_total = flips = total = 0
        ink = []
        for index in range(600):
            lay = d.sample_with_layout(6, index)[1]
            x, c = draw(index), clean.sample(6, index).x
            covered = union_of_boxes(lay)
            bg_ink += int(x[~covered].sum())
            bg_total += int((~covered).sum())
            flips += int((x ^ c)[covered].sum())
            total += int(covered.sum())
            ink.append(x.mean())
        _within(bg_ink / bg_total, q, bg_total)
        _within(flips / total, p_post, total)
        results[name] = (np.mean(ink), np.std(ink))
    (m1, s1), (m2, s2) = results["fast"], results["reference"]
    assert abs(m1 - m2) < 4.5 * math.hypot(s1, s2) / math.sqrt(600)


def test_spec_names_custom_stamps_by_content_not_path(tmp_path: Path) -> None:
    from sparling.domains.stamps import load_stamps, save_stamps

    stamps = load_stamps(None)
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    save_stamps(stamps, a)
    save_stamps(stamps, b)
    da = domains.make("digit-circle", stamps=str(a))
    db = domains.make("digit-circle", stamps=str(b))
    assert da.spec_hash() == db.spec_hash()  # same bits, different paths
    assert str(a) not in str(da.spec())
    changed = dict(stamps)
    changed["7"] = ~changed["7"]
    save_stamps(changed, b)  # edited in place: same path, new content
    assert domains.make("digit-circle", stamps=str(b)).spec_hash() != db.spec_hash()
