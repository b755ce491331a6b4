r"""LaTeX-OCR: read a small grammar's maths expressions off noisy rendered images.

The domain follows the paper and the authors' code (``latex_decompiler/latex_cfg.py``,
``cfg.py``, ``dataset.py``, ``render.py`` and ``localize_latex_characters.py`` in
``kavigupta/sparling-repro``), written anew here.

**Grammar** (``latex_cfg``; each nonterminal picks one rule with probability
proportional to the rule's weight)::

    EXPR    -> LINE                              (1)
             | \frac{ EXPR }{ EXPR }             (0.25)
    LINE    -> TERM (1) | TERM + LINE (0.25)
    TERM    -> ATOM (1) | ATOM TERM (0.25)       (juxtaposition)
    ATOM    -> SCRIPTED (1) | \left( LINE \right) (0.25)
    SCRIPTED-> SYMBOL (1) | SYMBOL ^{ SYMBOL } (1) | SYMBOL _{ SYMBOL } (1)
    SYMBOL  -> 0 | 1 | ... | 9 | x | y | z | a | b | c   (uniform)

Note that the superscript and subscript rules have weight 1 like the bare symbol (the
paper's "0.25 against 1" is for the recursive rules only): a third of all symbols carry
a script. Fractions appear only at the top level or inside fractions.

**Tokens.** The authors' output sequence is their grammar's terminals, one per
``Token``; we name each by its LaTeX code, so ``"".join(tokens)`` is the expression's
LaTeX source (e.g. ``["\\frac{", "x", "^{", "2", "}", "}{", "3", "}"]``)::

    0-9 x y z a b c   the symbols
    +                 addition
    ^{  _{            open a superscript / subscript (the authors' SUP( / SUB()
    \left(  \right)   parentheses (PAREN( / PAREN))
    \frac{  }{        open a fraction / go to its denominator (FRAC( / FRACMID)
    }                 close a script or a fraction (SUP) / SUB) / FRAC))

The one deliberate difference: the authors' three closing tokens SUP), SUB) and FRAC)
are one token ``"}"`` here (24 tokens instead of 26). Which group a ``"}"`` closes is
fixed by the tokens before it, so no information is lost; sequence lengths (and so
the length distribution and edit distances' denominators) are exactly the authors'.

**Sampling.** A target length is drawn uniformly from ``min_length..max_length``
(paper: 1..30 tokens) and the authors resample from the grammar until the length
matches. We draw from that same conditional distribution directly: a dynamic programme
gives, for every nonterminal and length, the probability of deriving exactly that many
tokens, and the derivation is sampled top down conditioned on the target length. This
is exact (the same distribution as rejection sampling) and takes microseconds even for
30 tokens, where rejection needs thousands of tries.

**Rendering.** The authors compile ``$\displaystyle ...$`` with pdflatex (standalone
class, 10 pt Computer Modern, 3 pt border) and rasterise it at 200 dpi. We lay the
expression out with matplotlib's mathtext in its Computer Modern fontset at 10 TeX pt
and 200 dpi (see :mod:`.mathtext_render`), top-level fractions as ``\dfrac`` (display
style, like ``\displaystyle``) and nested ones as ``\frac``. Like the authors, the page
(expression box plus the 3 pt border) is centred in the 120x360 canvas; a page larger
than the canvas is cropped symmetrically (the authors' ``padding``), not resampled, so
long expressions can lose characters at the edges (at the default settings 0.3% of
pages are cropped and 0.07% of samples lose a character; their tokens are kept). A
pixel is ink when its coverage is at least 25% (the authors threshold the grey level
at 0.75). Then every pixel independently becomes ink with probability ``noise``
(authors: ``rand < 0.25`` per pixel, "set_false" on their inverted image). ``x`` is
boolean with True = ink (the authors' array is the opposite, True = paper).

Known differences from pdflatex: mathtext is TeX-like, not TeX. It has no
``\delimitershortfall``, so ``\left( \right)`` around scripted content often takes
the next larger parenthesis where TeX would keep the normal one; fraction bars are one
pixel row (TeX's 0.4 pt is 1.1 px); script shifts and operator spacing follow
mathtext's approximations of TeX's rules.

**Ground truth.** One motif per rendered character: the symbols, ``+``, the two
parentheses and the fraction bar, each labelled with the token it stands for (the bar
with ``"\frac{"``). Its box bounds the pixels where that glyph alone has coverage above
10% (the authors' saturation > 0.1 test on the per-character colours), padded by
``box_pad`` pixels and clipped to the image; characters cropped away entirely get no
motif. Scripts, braces and ``}{`` draw nothing and have no motif. That gives 20 motif
classes (16 symbols, ``+``, two parentheses, the bar), as in the authors' evaluation
(``compute_stamps``, which labels the bar FRACBAR); the "19 true classes" of
docs/method.md are those without the bar, which ``fraction_bar_motif=False`` reproduces.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from pydantic import Field, model_validator

from . import register
from .base import Domain, DomainError, DomainParams, Motif, Sample
from .mathtext_render import TEX_POINTS_PER_INCH, layout, rasterise

# -- tokens ----------------------------------------------------------------------------
SYMBOLS: tuple[str, ...] = tuple("0123456789xyzabc")
PLUS = "+"
SUP_OPEN = "^{"
SUB_OPEN = "_{"
CLOSE = "}"
PAREN_OPEN = r"\left("
PAREN_CLOSE = r"\right)"
FRAC_OPEN = r"\frac{"
FRAC_MID = "}{"

#: every output token, in a fixed order
VOCABULARY: tuple[str, ...] = (
    *SYMBOLS,
    PLUS,
    SUP_OPEN,
    SUB_OPEN,
    CLOSE,
    PAREN_OPEN,
    PAREN_CLOSE,
    FRAC_OPEN,
    FRAC_MID,
)

#: tokens that draw one glyph each (the fraction bar is drawn for FRAC_OPEN, separately)
GLYPH_TOKENS: frozenset[str] = frozenset((*SYMBOLS, PLUS, PAREN_OPEN, PAREN_CLOSE))

#: the true motif classes: every rendered character, named by its token
MOTIF_SYMBOLS: tuple[str, ...] = (*SYMBOLS, PLUS, PAREN_OPEN, PAREN_CLOSE, FRAC_OPEN)

#: the paper's mean number of rendered characters per image (200 test samples)
PAPER_MEAN_CHARACTERS = 9.64


# -- grammar ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """One alternative of a nonterminal: its weight and its parts (tokens or nonterminals)."""

    weight: float
    parts: tuple[str, ...]


def _pick(rng: np.random.Generator, weights: Sequence[float]) -> int:
    """Index drawn with probability proportional to ``weights`` (one uniform draw)."""
    total = math.fsum(weights)
    if not total > 0:
        raise RuntimeError("no alternative can produce the requested length")
    u = rng.random() * total
    acc = 0.0
    for i, w in enumerate(weights):
        acc += w
        if u < acc:
            return i
    # floating-point slop: fall back on the last alternative with any weight
    return max(i for i, w in enumerate(weights) if w > 0)


class Grammar:
    """A weighted context-free grammar that samples derivations of an exact length.

    Every part of every rule must derive at least one token (no empty rules), which
    keeps the length recursion well founded.
    """

    def __init__(self, rules: Mapping[str, Sequence[Rule]], start: str) -> None:
        self.rules = {name: tuple(alts) for name, alts in rules.items()}
        self.start = start
        # each alternative's probability within its nonterminal
        self._probs = {
            name: tuple(r.weight / math.fsum(a.weight for a in alts) for r in alts)
            for name, alts in self.rules.items()
        }
        self._length_cache: dict[tuple[str, int], float] = {}
        self._suffix_cache: dict[tuple[str, int, int, int], float] = {}
        self._count_cache: dict[tuple[tuple[tuple[str, float], ...], str, int], float] = {}
        self._alt_cache: dict[tuple[str, int], list[float]] = {}
        self._suffix_count_cache: dict[
            tuple[tuple[tuple[str, float], ...], str, int, int, int], float
        ] = {}
        self._split_cache: dict[tuple[str, int, int, int], list[float]] = {}

    def is_terminal(self, part: str) -> bool:
        return part not in self.rules

    def length_probability(self, part: str, n: int) -> float:
        """P(``part`` derives exactly ``n`` tokens) when expanded freely."""
        if self.is_terminal(part):
            return 1.0 if n == 1 else 0.0
        key = (part, n)
        if key not in self._length_cache:
            self._length_cache[key] = math.fsum(
                p * self._suffix_probability(part, i, 0, n) for i, p in enumerate(self._probs[part])
            )
        return self._length_cache[key]

    def _suffix_probability(self, name: str, alt: int, j: int, n: int) -> float:
        """P(parts ``j:`` of alternative ``alt`` of ``name`` derive exactly ``n`` tokens)."""
        parts = self.rules[name][alt].parts
        if j == len(parts):
            return 1.0 if n == 0 else 0.0
        if n < len(parts) - j:  # every part needs at least one token
            return 0.0
        key = (name, alt, j, n)
        if key not in self._suffix_cache:
            self._suffix_cache[key] = math.fsum(
                self.length_probability(parts[j], a)
                * self._suffix_probability(name, alt, j + 1, n - a)
                for a in range(1, n - (len(parts) - j - 1) + 1)
            )
        return self._suffix_cache[key]

    def sample(self, rng: np.random.Generator, n: int) -> list[str]:
        """A derivation of the start symbol conditioned on having exactly ``n`` tokens.

        Same distribution as drawing derivations until one has ``n`` tokens.
        """
        if not self.length_probability(self.start, n) > 0:
            raise DomainError(f"the grammar cannot derive {n} tokens")
        out: list[str] = []
        self._expand(self.start, n, rng, out)
        return out

    def _expand(self, name: str, n: int, rng: np.random.Generator, out: list[str]) -> None:
        alt = _pick(rng, self._alternative_weights(name, n))
        parts = self.rules[name][alt].parts
        remaining = n
        for j, part in enumerate(parts):
            if j == len(parts) - 1:
                size = remaining
            else:  # sizes start at 1: index i of the weights is size i + 1
                size = 1 + _pick(rng, self._split_weights(name, alt, j, remaining))
            if self.is_terminal(part):
                out.append(part)
            else:
                self._expand(part, size, rng, out)
            remaining -= size

    def _alternative_weights(self, name: str, n: int) -> list[float]:
        """Unnormalised P(alternative | ``name`` derives ``n`` tokens), cached."""
        key = (name, n)
        if key not in self._alt_cache:
            self._alt_cache[key] = [
                p * self._suffix_probability(name, i, 0, n) for i, p in enumerate(self._probs[name])
            ]
        return self._alt_cache[key]

    def _split_weights(self, name: str, alt: int, j: int, n: int) -> list[float]:
        """Unnormalised P(part ``j`` takes 1, 2, ... tokens | parts ``j:`` take ``n``), cached."""
        key = (name, alt, j, n)
        if key not in self._split_cache:
            parts = self.rules[name][alt].parts
            self._split_cache[key] = [
                self.length_probability(parts[j], a)
                * self._suffix_probability(name, alt, j + 1, n - a)
                for a in range(1, n - (len(parts) - j - 1) + 1)
            ]
        return self._split_cache[key]

    def expected_count(self, counts: Mapping[str, float], n: int) -> float:
        """E[sum of ``counts[token]`` over the tokens | the start symbol derives ``n`` tokens]."""
        key_counts = tuple(sorted(counts.items()))
        total = self._joint_count(key_counts, self.start, n)
        return total / self.length_probability(self.start, n)

    def _joint_count(self, counts: tuple[tuple[str, float], ...], part: str, n: int) -> float:
        # E[count * 1{length == n}], by the same recursion as the length probabilities.
        if self.is_terminal(part):
            return dict(counts).get(part, 0.0) if n == 1 else 0.0
        key = (counts, part, n)
        if key not in self._count_cache:
            total = 0.0
            for alt, p in enumerate(self._probs[part]):
                total += p * self._suffix_joint_count(counts, part, alt, 0, n)
            self._count_cache[key] = total
        return self._count_cache[key]

    def _suffix_joint_count(
        self, counts: tuple[tuple[str, float], ...], name: str, alt: int, j: int, n: int
    ) -> float:
        parts = self.rules[name][alt].parts
        if j == len(parts) or n < len(parts) - j:
            return 0.0
        key = (counts, name, alt, j, n)
        if key not in self._suffix_count_cache:
            # the count of parts j: is part j's count plus the count of parts j+1:
            total = 0.0
            for a in range(1, n - (len(parts) - j - 1) + 1):
                rest_p = self._suffix_probability(name, alt, j + 1, n - a)
                total += self._joint_count(counts, parts[j], a) * rest_p
                total += self.length_probability(parts[j], a) * self._suffix_joint_count(
                    counts, name, alt, j + 1, n - a
                )
            self._suffix_count_cache[key] = total
        return self._suffix_count_cache[key]


def _latex_grammar() -> Grammar:
    """The authors' ``latex_cfg`` (see the module docstring)."""
    return Grammar(
        {
            "EXPR": [
                Rule(1.0, ("LINE",)),
                Rule(0.25, (FRAC_OPEN, "EXPR", FRAC_MID, "EXPR", CLOSE)),
            ],
            "LINE": [Rule(1.0, ("TERM",)), Rule(0.25, ("TERM", PLUS, "LINE"))],
            "TERM": [Rule(1.0, ("ATOM",)), Rule(0.25, ("ATOM", "TERM"))],
            "ATOM": [
                Rule(1.0, ("SCRIPTED",)),
                Rule(0.25, (PAREN_OPEN, "LINE", PAREN_CLOSE)),
            ],
            "SCRIPTED": [
                Rule(1.0, ("SYMBOL",)),
                Rule(1.0, ("SYMBOL", SUP_OPEN, "SYMBOL", CLOSE)),
                Rule(1.0, ("SYMBOL", SUB_OPEN, "SYMBOL", CLOSE)),
            ],
            "SYMBOL": [Rule(1.0, (s,)) for s in SYMBOLS],
        },
        start="EXPR",
    )


GRAMMAR = _latex_grammar()

#: rendered characters per token: the authors count the fraction bar on FRACMID
_CHARACTER_COUNTS: dict[str, float] = {**dict.fromkeys(GLYPH_TOKENS, 1.0), FRAC_MID: 1.0}


@functools.lru_cache(maxsize=64)
def mean_characters(min_length: int = 1, max_length: int = 30) -> float:
    """Exact expected number of rendered characters per expression (before any cropping).

    With the paper's 1..30 this is the quantity the paper estimated as 9.64 from 200
    samples.
    """
    lengths = range(min_length, max_length + 1)
    return math.fsum(GRAMMAR.expected_count(_CHARACTER_COUNTS, n) for n in lengths) / len(lengths)


# -- token sequences -------------------------------------------------------------------
def check_tokens(tokens: Sequence[str]) -> None:
    """Raise ValueError unless ``tokens`` is a well-formed sequence of this domain.

    Checks the vocabulary and that groups open and close properly: every ``"}"`` closes
    a script or a fraction's denominator, every ``"}{"`` follows a numerator, every
    ``\\right)`` closes a ``\\left(`` opened in the same group.
    """
    stack: list[str] = []
    for i, tok in enumerate(tokens):
        if tok not in VOCABULARY:
            raise DomainError(f"token {i} ({tok!r}) is not in the vocabulary")
        if tok in (SUP_OPEN, SUB_OPEN, FRAC_OPEN, PAREN_OPEN):
            stack.append(tok)
        elif tok == FRAC_MID:
            if not stack or stack[-1] != FRAC_OPEN:
                raise DomainError(f"token {i} ('}}{{') does not follow a fraction's numerator")
            stack[-1] = FRAC_MID
        elif tok == CLOSE:
            if not stack or stack[-1] not in (SUP_OPEN, SUB_OPEN, FRAC_MID):
                raise DomainError(f"token {i} ('}}') closes nothing")
            stack.pop()
        elif tok == PAREN_CLOSE:
            if not stack or stack[-1] != PAREN_OPEN:
                raise DomainError(f"token {i} (\\right)) has no matching \\left(")
            stack.pop()
    if stack:
        raise DomainError(f"unclosed groups at the end: {stack}")


def to_mathtext(tokens: Sequence[str]) -> str:
    r"""The mathtext source for ``tokens``, typeset as under ``\displaystyle``.

    In display style a fraction's numerator and denominator are in text style, so a
    top-level ``\frac`` becomes mathtext's ``\dfrac`` (full-size parts) and nested ones
    stay ``\frac`` (each level shrinks, as TeX's text -> script -> scriptscript).
    """
    depth = 0  # how many groups (fraction parts or scripts) we are inside
    out: list[str] = []
    for tok in tokens:
        if tok == FRAC_OPEN:
            out.append(r"\dfrac{" if depth == 0 else tok)
            depth += 1
        elif tok in (SUP_OPEN, SUB_OPEN):
            out.append(tok)
            depth += 1
        elif tok == CLOSE:
            out.append(tok)
            depth -= 1
        else:
            out.append(tok)
    return "".join(out)


# -- the domain ------------------------------------------------------------------------
@register
class LatexOCR(Domain):
    """Noisy renderings of small LaTeX expressions; output: the expression's tokens."""

    name: ClassVar[str] = "latex-ocr"
    kind = "image"
    storage = "bits"
    context_radius = 32  # the paper's g context radius for LaTeX-OCR

    class Params(DomainParams):
        """Parameters of LaTeX-OCR (defaults: the paper's setting)."""

        height: int = Field(120, ge=16, le=1024, description="Image height in pixels (paper: 120).")
        width: int = Field(360, ge=16, le=4096, description="Image width in pixels (paper: 360).")
        min_length: int = Field(
            1, ge=1, le=60, description="Shortest expression, in tokens (paper: 1)."
        )
        max_length: int = Field(
            30, ge=1, le=60, description="Longest expression, in tokens (paper: 30)."
        )
        noise: float = Field(
            0.25,
            ge=0.0,
            lt=1.0,
            description="Probability that each pixel is independently set to ink (paper: 0.25).",
        )
        dpi: float = Field(
            200.0, gt=0.0, le=1200.0, description="Rendering resolution (paper: 200)."
        )
        font_size_pt: float = Field(
            10.0,
            gt=0.0,
            le=72.0,
            description="Font size in TeX points, LaTeX's default being 10 (paper: 10).",
        )
        box_pad: int = Field(
            2, ge=0, le=64, description="Pixels added on every side of a motif box (paper: 2)."
        )
        fraction_bar_motif: bool = Field(
            True,
            description=(
                "Whether the fraction bar is a motif (class '\\frac{'): True as in the "
                "authors' evaluation (20 classes); False gives 19 classes, characters only."
            ),
        )

        @model_validator(mode="after")
        def _lengths_ordered(self) -> LatexOCR.Params:
            if self.min_length > self.max_length:
                raise DomainError(
                    f"min_length ({self.min_length}) must be at most max_length ({self.max_length})"
                )
            return self

    params: LatexOCR.Params

    #: standalone's border around the expression, in TeX points (authors' template)
    BORDER_PT: ClassVar[float] = 3.0
    #: coverage (0-255) at or above which a pixel is ink: grey level <= 0.75 of white
    INK_THRESHOLD: ClassVar[int] = 64
    #: coverage (0-255) above which a pixel counts for its glyph's box: saturation > 0.1
    BOX_THRESHOLD: ClassVar[int] = 25

    # -- descriptive properties -------------------------------------------------------
    @property
    def vocabulary(self) -> list[str]:
        return list(VOCABULARY)

    @property
    def motif_symbols(self) -> list[str]:
        if self.params.fraction_bar_motif:
            return list(MOTIF_SYMBOLS)
        return [s for s in MOTIF_SYMBOLS if s != FRAC_OPEN]

    @property
    def paper_channels(self) -> int:
        return 32

    @property
    def max_tokens(self) -> int:
        return self.params.max_length

    @property
    def expected_motifs(self) -> float:
        # The paper's figure, which fixes the reported density (0.5 * 0.75**38); the
        # exact mean of this grammar is mean_characters() (about 9.6).
        return PAPER_MEAN_CHARACTERS

    @property
    def input_shape(self) -> tuple[int, int]:
        return (self.params.height, self.params.width)

    # -- sampling ---------------------------------------------------------------------
    def sample(self, seed: int, index: int) -> Sample:
        p = self.params
        rng = self.rng(seed, index)
        length = int(rng.integers(p.min_length, p.max_length + 1))
        tokens = GRAMMAR.sample(rng, length)
        ink, motifs = self.render(tokens)
        if p.noise > 0:
            ink |= rng.random(ink.shape) < p.noise
        return Sample(x=ink, tokens=tokens, motifs=motifs)

    def render(self, tokens: Sequence[str]) -> tuple[np.ndarray, list[Motif]]:
        """The clean (noise-free) binary image of ``tokens`` and its motifs.

        Returns:
            ``(ink, motifs)``: ink is a bool array of :attr:`input_shape`, True = ink;
            motifs are in token order (the fraction bar at its ``\\frac{`` token).

        Raises:
            ValueError: ``tokens`` is not a well-formed token sequence.
        """
        check_tokens(tokens)
        p = self.params
        lay = layout(to_mathtext(tokens), font_size_pt=p.font_size_pt, dpi=p.dpi)
        coverage, glyph_boxes, rule_boxes = rasterise(
            lay,
            self.input_shape,
            self._origin(lay.height, lay.width),
            dpi=p.dpi,
            box_threshold=self.BOX_THRESHOLD,
        )
        # mathtext emits glyphs in reading order and one rule per fraction when it
        # reaches the fraction's "}{", so both line up with the tokens.
        glyph_symbols = [t for t in tokens if t in GLYPH_TOKENS]
        bar_owners = _fraction_owners(tokens)
        if len(glyph_boxes) != len(glyph_symbols) or len(rule_boxes) != len(bar_owners):
            raise RuntimeError(
                f"mathtext drew {len(glyph_boxes)} glyphs and {len(rule_boxes)} rules for "
                f"{len(glyph_symbols)} characters and {len(bar_owners)} fractions: {tokens}"
            )
        boxes: list[tuple[int, str, tuple[int, int, int, int] | None]] = []
        glyph_positions = [i for i, t in enumerate(tokens) if t in GLYPH_TOKENS]
        for pos, sym, box in zip(glyph_positions, glyph_symbols, glyph_boxes):
            boxes.append((pos, sym, box))
        if p.fraction_bar_motif:
            for pos, box in zip(bar_owners, rule_boxes):
                boxes.append((pos, FRAC_OPEN, box))
        boxes.sort(key=lambda item: item[0])
        motifs = [Motif(sym, self._padded(box)) for _, sym, box in boxes if box is not None]
        return coverage >= self.INK_THRESHOLD, motifs

    # -- helpers ----------------------------------------------------------------------
    def _origin(self, box_height: float, box_width: float) -> tuple[float, float]:
        """Where the expression box's top left corner goes (may be negative when cropped).

        As the authors: the page is the box plus the border on every side, a whole
        number of pixels; it is centred (extra pixel at the bottom/right), and a page
        larger than the canvas is cropped by the same rule.
        """
        p = self.params
        border = self.BORDER_PT * p.dpi / TEX_POINTS_PER_INCH
        page_h = math.ceil(box_height + 2 * border)
        page_w = math.ceil(box_width + 2 * border)
        return (_centre_offset(page_h, p.height) + border, _centre_offset(page_w, p.width) + border)

    def _padded(self, box: tuple[int, int, int, int]) -> tuple[slice, slice]:
        r0, r1, c0, c1 = box
        pad = self.params.box_pad
        h, w = self.input_shape
        return (
            slice(max(r0 - pad, 0), min(r1 + pad, h)),
            slice(max(c0 - pad, 0), min(c1 + pad, w)),
        )


def _centre_offset(size: int, canvas: int) -> int:
    """Offset of a ``size``-pixel page in a ``canvas``: pad, or crop, half each side."""
    if size <= canvas:
        return (canvas - size) // 2
    return -((size - canvas) // 2)


def _fraction_owners(tokens: Sequence[str]) -> list[int]:
    r"""For each fraction bar in drawing order, the index of its ``\frac{`` token.

    A bar is drawn once its numerator is done, i.e. in the order of the ``}{`` tokens.
    """
    open_fracs: list[int] = []
    owners: list[int] = []
    for i, tok in enumerate(tokens):
        if tok == FRAC_OPEN:
            open_fracs.append(i)
        elif tok == FRAC_MID:
            owners.append(open_fracs.pop())
    return owners


__all__ = [
    "GLYPH_TOKENS",
    "GRAMMAR",
    "MOTIF_SYMBOLS",
    "PAPER_MEAN_CHARACTERS",
    "SYMBOLS",
    "VOCABULARY",
    "Grammar",
    "LatexOCR",
    "Rule",
    "check_tokens",
    "mean_characters",
    "to_mathtext",
]
