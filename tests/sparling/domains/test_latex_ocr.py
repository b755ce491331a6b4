"""Tests of the LaTeX-OCR domain: grammar, sampling, rendering and ground-truth boxes."""

from __future__ import annotations

import math
import pickle
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest

from sparling import domains
from sparling.domains.latex_ocr import (
    FRAC_MID,
    FRAC_OPEN,
    GLYPH_TOKENS,
    GRAMMAR,
    MOTIF_SYMBOLS,
    PAPER_MEAN_CHARACTERS,
    Grammar,
    LatexOCR,
    check_tokens,
    mean_characters,
    to_mathtext,
)
from sparling.domains.mathtext_render import layout


@pytest.fixture(scope="module")
def domain() -> LatexOCR:
    d = domains.make("latex-ocr")
    assert isinstance(d, LatexOCR)
    return d


@pytest.fixture(scope="module")
def clean() -> LatexOCR:
    d = domains.make("latex-ocr", noise=0.0)
    assert isinstance(d, LatexOCR)
    return d


def n_characters(tokens: Sequence[str]) -> int:
    """Rendered characters of a token sequence, counted as the authors do (bar on '}{')."""
    return sum(t in GLYPH_TOKENS or t == FRAC_MID for t in tokens)


# -- the contract ------------------------------------------------------------------------
def test_registered_and_described(domain: LatexOCR) -> None:
    assert "latex-ocr" in domains.names()
    assert (domain.name, domain.kind, domain.storage) == ("latex-ocr", "image", "bits")
    assert domain.input_shape == (120, 360)
    assert domain.paper_channels == 32
    assert domain.expected_motifs == PAPER_MEAN_CHARACTERS == 9.64
    assert domain.reported_density == pytest.approx(0.5 * 0.75**38, rel=1e-12)
    assert f"{domain.reported_density:.6e}" == "8.939187e-06"
    vocab = domain.vocabulary
    assert len(vocab) == len(set(vocab)) == 24
    assert set(vocab) >= {"7", "x", "+", "^{", "_{", "}", r"\frac{", "}{", r"\left(", r"\right)"}
    assert domain.motif_symbols == list(MOTIF_SYMBOLS)
    assert domain.num_motif_classes == 20
    assert set(domain.motif_symbols) <= set(vocab)
    no_bar = domains.make("latex-ocr", fraction_bar_motif=False)
    assert no_bar.num_motif_classes == 19
    assert FRAC_OPEN not in no_bar.motif_symbols
    # every parameter is documented
    for name, field in LatexOCR.Params.model_fields.items():
        assert field.description, name


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"noise": 1.5}, "noise"),
        ({"noise": -0.1}, "noise"),
        ({"max_length": 0}, "max_length"),
        ({"min_length": 5, "max_length": 3}, "min_length"),
        ({"height": 4}, "height"),
        ({"box_pad": -1}, "box_pad"),
        ({"dpi": 0}, "dpi"),
        ({"font_size": 10}, "font_size"),  # unknown key (the field is font_size_pt)
    ],
)
def test_bad_params_raise(params: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        domains.make("latex-ocr", **params)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=needle):
        LatexOCR(**params)  # type: ignore[arg-type]


def test_bad_params_say_what_is_accepted() -> None:
    with pytest.raises(ValueError, match=r"less than 1"):
        domains.make("latex-ocr", noise=1.0)
    with pytest.raises(ValueError, match=r"min_length \(5\) must be at most max_length \(3\)"):
        domains.make("latex-ocr", min_length=5, max_length=3)
    with pytest.raises(ValueError, match="split must be one of"):
        LatexOCR(split="dev")  # type: ignore[arg-type]


# -- determinism ---------------------------------------------------------------------------
def test_deterministic(domain: LatexOCR) -> None:
    a = domain.sample(seed=3, index=11)
    b = domains.make("latex-ocr").sample(seed=3, index=11)
    assert a.x.dtype == np.bool_ and a.x.shape == (120, 360)
    assert a.x.tobytes() == b.x.tobytes()
    assert a.tokens == b.tokens
    assert a.motifs == b.motifs


def test_streams_differ(domain: LatexOCR) -> None:
    base = domain.sample(seed=3, index=11).x.tobytes()
    assert domain.sample(seed=4, index=11).x.tobytes() != base
    assert domain.sample(seed=3, index=12).x.tobytes() != base
    assert domains.make("latex-ocr", split="test").sample(seed=3, index=11).x.tobytes() != base
    tokens = {tuple(domain.sample(seed=0, index=i).tokens) for i in range(12)}
    assert len(tokens) > 8


# -- grammar and token sequences -------------------------------------------------------------
def test_samples_are_well_formed(domain: LatexOCR) -> None:
    for i in range(20):
        tokens = domain.sample(seed=1, index=i).tokens
        assert 1 <= len(tokens) <= 30
        check_tokens(tokens)  # vocabulary, brace balance, \left( ... \right) pairing


@pytest.mark.parametrize(
    "tokens",
    [
        ["x", "}"],
        ["x", "^{", "2"],
        [r"\left(", "x"],
        [r"\right)", "x"],
        ["x", FRAC_MID, "y"],
        ["x", "^{", r"\left(", "}", r"\right)"],
        ["xx"],
    ],
)
def test_check_tokens_rejects(tokens: list[str]) -> None:
    with pytest.raises(ValueError):
        check_tokens(tokens)


def test_to_mathtext_uses_display_style_fractions() -> None:
    tokens = [FRAC_OPEN, FRAC_OPEN, "a", FRAC_MID, "b", "}", FRAC_MID, "c", "^{", "2", "}", "}"]
    check_tokens(tokens)
    assert "".join(tokens) == r"\frac{\frac{a}{b}}{c^{2}}"
    assert to_mathtext(tokens) == r"\dfrac{\frac{a}{b}}{c^{2}}"


def test_exact_lengths() -> None:
    d = domains.make("latex-ocr", min_length=7, max_length=7, noise=0.0)
    rng = np.random.default_rng(0)
    for _ in range(200):
        tokens = GRAMMAR.sample(rng, 7)
        assert len(tokens) == 7
        check_tokens(tokens)
    assert len(d.sample(0, 0).tokens) == 7
    # the length probabilities are a (sub-)distribution; the grammar is subcritical, so
    # almost all its mass is on short derivations
    mass = math.fsum(GRAMMAR.length_probability("EXPR", n) for n in range(1, 61))
    assert 0.99 < mass <= 1 + 1e-12


def _free_sample(grammar: Grammar, rng: np.random.Generator, part: str) -> list[str]:
    """Expand without any length condition (the authors' sampler)."""
    if grammar.is_terminal(part):
        return [part]
    rules = grammar.rules[part]
    u = rng.random() * sum(r.weight for r in rules)
    rule = rules[-1]
    for r in rules:
        if u < r.weight:
            rule = r
            break
        u -= r.weight
    return [t for p in rule.parts for t in _free_sample(grammar, rng, p)]


def test_conditional_sampling_matches_rejection_sampling() -> None:
    """Sampling conditioned on the length equals resampling until the length matches."""
    n, draws = 5, 1000
    rng = np.random.default_rng(1)
    rejected: list[tuple[str, ...]] = []
    while len(rejected) < draws:
        tokens = _free_sample(GRAMMAR, rng, "EXPR")
        if len(tokens) == n:
            rejected.append(tuple(tokens))
    direct = [tuple(GRAMMAR.sample(rng, n)) for _ in range(draws)]

    def shape(tokens: tuple[str, ...]) -> str:  # the structure, symbols abstracted away
        return " ".join("s" if t in "0123456789xyzabc" else t for t in tokens)

    a, b = Counter(map(shape, rejected)), Counter(map(shape, direct))
    for key in set(a) | set(b):
        pa, pb = a[key] / draws, b[key] / draws
        # two independent binomial proportions: 5 standard errors of their difference
        p = (pa + pb) / 2
        assert abs(pa - pb) <= 5 * math.sqrt(2 * p * (1 - p) / draws) + 2 / draws, key


def test_mean_characters_near_paper() -> None:
    """Characters per expression, counted from tokens: exact mean and a large sample.

    The paper's 9.64 is a mean over 200 samples; with a per-sample standard deviation of
    about 5.3 its own standard error is about 0.38, so the exact mean must lie within
    two of those (0.75). The sampler must then reproduce the exact mean: 2000 draws
    have a standard error of about 0.12, and we allow four of them (0.5).
    """
    exact = mean_characters()
    assert abs(exact - PAPER_MEAN_CHARACTERS) < 0.75
    rng = np.random.default_rng(2)
    counts = [n_characters(GRAMMAR.sample(rng, int(rng.integers(1, 31)))) for _ in range(2000)]
    assert abs(np.mean(counts) - exact) < 0.5


# -- rendering and boxes --------------------------------------------------------------------------
def test_computer_modern_fonts() -> None:
    lay = layout(r"\dfrac{x+2}{\left(a\right)}", font_size_pt=10, dpi=200)
    fonts = {chr(g.char_code): g.font_name for g in lay.glyphs if g.char_code < 128}
    assert fonts["x"] == fonts["a"] == "cmmi10"  # math italic letters
    assert fonts["2"] == fonts["+"] == "cmr10"  # roman digits and operators
    assert len(lay.rules) == 1  # the fraction bar
    # 10 pt at 200 dpi: a digit is about half an em (27.7 px) wide and 0.64 em tall
    two = next(g for g in lay.glyphs if g.char_code == ord("2"))
    assert two.fontsize == pytest.approx(10 * 72 / 72.27)


def test_boxes_cover_every_glyph(clean: LatexOCR) -> None:
    """Without noise, every ink pixel is in some motif box, and every box holds ink."""
    for i in range(40):
        s = clean.sample(seed=5, index=i)
        covered = np.zeros_like(s.x)
        for m in s.motifs:
            assert m.symbol in MOTIF_SYMBOLS
            rows, cols = m.slices
            assert 0 <= rows.start < rows.stop <= 120 and 0 <= cols.start < cols.stop <= 360
            box = s.x[m.slices]
            assert box.any(), (s.tokens, m)
            covered[m.slices] = True
        assert not (s.x & ~covered).any(), s.tokens
        # one motif per rendered character, in token order (unless cropped away)
        assert len(s.motifs) <= n_characters(s.tokens)
        expected = [t for t in s.tokens if t in GLYPH_TOKENS or t == FRAC_OPEN]
        if len(s.motifs) == len(expected):
            assert [m.symbol for m in s.motifs] == expected


def test_boxes_are_tight(clean: LatexOCR) -> None:
    """A box is its glyph's ink plus the 2-pixel pad (a little more for antialiasing)."""
    ink, motifs = clean.render(["x", "+", "1"])
    assert [m.symbol for m in motifs] == ["x", "+", "1"]
    for m in motifs:
        rows, cols = np.nonzero(ink[m.slices])
        # ink (>= 25% coverage) starts within pad + 1 pixel of the box's edges
        assert rows.min() <= 3 and cols.min() <= 3
        box_h, box_w = ink[m.slices].shape
        assert box_h - 1 - rows.max() <= 3 and box_w - 1 - cols.max() <= 3
    # x, + and 1 sit side by side, left to right, on one line
    lefts = [m.slices[1].start for m in motifs]
    assert lefts == sorted(lefts)


def test_fraction_bar_motif() -> None:
    tokens = [FRAC_OPEN, "1", FRAC_MID, "2", "}"]
    with_bar = domains.make("latex-ocr", noise=0.0)
    assert isinstance(with_bar, LatexOCR)
    ink, motifs = with_bar.render(tokens)
    assert [m.symbol for m in motifs] == [FRAC_OPEN, "1", "2"]
    bar, one, two = (m.slices for m in motifs)
    assert bar[0].stop - bar[0].start <= 2 * 2 + 2  # a thin rule plus the pad
    assert one[0].stop <= bar[0].stop and two[0].start >= bar[0].start  # 1 above, 2 below
    without = domains.make("latex-ocr", noise=0.0, fraction_bar_motif=False)
    assert isinstance(without, LatexOCR)
    ink2, motifs2 = without.render(tokens)
    assert [m.symbol for m in motifs2] == ["1", "2"]
    assert (ink == ink2).all()


def test_centred(clean: LatexOCR) -> None:
    ink, _ = clean.render(["7"])
    rows, cols = np.nonzero(ink)
    assert abs((rows.min() + rows.max()) / 2 - 60) < 12  # the box, not the ink, is centred
    assert abs((cols.min() + cols.max()) / 2 - 180) < 3


def test_too_wide_expression_is_cropped(clean: LatexOCR) -> None:
    """Like the authors, a page wider than the canvas is cropped symmetrically."""
    tokens: list[str] = []
    for d in "1234567890":
        tokens += [d, "^{", "x", "}", "+"]
    tokens = tokens[:-1]
    ink, motifs = clean.render(tokens)
    assert ink[:, 0].any() or ink[:, 1].any() or ink[:, 2].any()  # runs off the left edge
    assert len(motifs) < n_characters(tokens)
    covered = np.zeros_like(ink)
    for m in motifs:
        assert ink[m.slices].any()
        covered[m.slices] = True
    assert not (ink & ~covered).any()


def test_noise_sets_a_quarter_of_pixels(domain: LatexOCR, clean: LatexOCR) -> None:
    noisy = domain.sample(seed=9, index=4)
    plain = clean.sample(seed=9, index=4)
    assert noisy.tokens == plain.tokens and noisy.motifs == plain.motifs
    assert (noisy.x >= plain.x).all()  # noise only adds ink
    background = ~plain.x
    # 40,000-odd independent pixels: standard error 0.002
    assert abs(noisy.x[background].mean() - 0.25) < 0.01


def test_mean_rendered_characters_near_paper(clean: LatexOCR) -> None:
    """Motifs per rendered image over 300 samples against the paper's 9.64.

    The paper's figure has a standard error of about 0.38 (200 samples, sd 5.3) and
    ours about 0.31 (300 samples), so their difference has a standard error of about
    0.49; we allow three of those (1.5). Cropping removes a few characters, so the
    motif count can only be below the token count.
    """
    counts = [len(clean.sample(seed=11, index=i).motifs) for i in range(300)]
    assert abs(np.mean(counts) - PAPER_MEAN_CHARACTERS) < 1.5


def test_pickles(domain: LatexOCR) -> None:
    """Workers receive domains by pickling; a copy samples the same bytes."""
    copy = pickle.loads(pickle.dumps(domain))
    assert copy.spec() == domain.spec()
    assert copy.sample(2, 2).x.tobytes() == domain.sample(2, 2).x.tobytes()
