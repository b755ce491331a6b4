"""Render TeX-like maths with matplotlib's mathtext, keeping every glyph's position.

No TeX installation is needed: matplotlib's mathtext lays the expression out with its
own TeX-like box engine and ships the Computer Modern (BaKoMa) TrueType fonts, selected
by the math font family ``"cm"``. We ask mathtext for the *vector* layout (each glyph as
font, size, glyph index and position; each rule, i.e. fraction bar, as a rectangle) and
rasterise it ourselves with FreeType, one glyph at a time. Drawing glyph by glyph is
what gives the exact ink of every glyph, so ground-truth boxes come for free and need
no colour tricks (the paper's pipeline rendered each character in its own colour with
pdflatex and read the boxes back from the hues).

Rasterisation follows what ``MathTextParser("agg")`` itself does (glyph tops at the
truncated baseline-minus-bearing position, rules filled as whole pixel rows), so an
image looks like matplotlib's own mathtext output, but with unhinted outlines (as a PDF
rasteriser draws them) and independent of the user's rcParams.

Everything here is plain numpy + matplotlib (no pyplot).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: TeX points per inch (a TeX ``pt`` is 1/72.27 in; matplotlib's points are 1/72 in).
TEX_POINTS_PER_INCH = 72.27

#: rcParams that change mathtext's layout or glyph choice; pinned to matplotlib's
#: defaults while we parse, so a user's matplotlibrc cannot change the dataset.
_PINNED_RC_KEYS = (
    "mathtext.default",
    "mathtext.fallback",
    "text.kerning_factor",
    "font.enable_last_resort",
)


@dataclass(frozen=True)
class PlacedGlyph:
    """One glyph of a layout: which font glyph, and where (pixels, y downwards).

    ``x`` is the pen position and ``baseline`` the baseline, both relative to the top
    left corner of the expression's box.
    """

    font: Any  # matplotlib.ft2font.FT2Font (kept untyped: the stubs are partial)
    fontsize: float
    glyph_index: int
    char_code: int
    x: float
    baseline: float

    @property
    def font_name(self) -> str:
        """File stem of the font, e.g. ``"cmmi10"``."""
        name = str(self.font.fname).replace("\\", "/").rsplit("/", 1)[-1]
        return name.rsplit(".", 1)[0]


@dataclass(frozen=True)
class PlacedRule:
    """A filled rectangle of a layout (the fraction bar), pixels, y downwards."""

    x: float
    top: float
    width: float
    height: float


@dataclass(frozen=True)
class Layout:
    """The laid-out expression: its box (pixels) and what is drawn in it, in drawing order.

    ``height`` is the whole box height (ascent + descent), as a TeX box's
    ``height + depth``; matplotlib rounds the box's dimensions up to whole pixels.
    """

    width: float
    height: float
    depth: float
    glyphs: tuple[PlacedGlyph, ...]
    rules: tuple[PlacedRule, ...]


def tex_points_to_mpl_points(size_tex_pt: float) -> float:
    """Convert a TeX point size (1/72.27 in) to matplotlib points (1/72 in)."""
    return size_tex_pt * 72.0 / TEX_POINTS_PER_INCH


@functools.lru_cache(maxsize=8)
def _font_properties(size_mpl_pt: float) -> Any:
    from matplotlib.font_manager import FontProperties

    return FontProperties(size=size_mpl_pt, math_fontfamily="cm")


@functools.lru_cache(maxsize=1)
def _vector_parser() -> Any:
    from matplotlib.mathtext import MathTextParser

    # "path" output lays out with unhinted metrics (LoadFlags.NO_HINTING).
    return MathTextParser("path")


@functools.lru_cache(maxsize=1)
def _pinned_rc() -> dict[str, Any]:
    import matplotlib as mpl

    defaults: Any = mpl.rcParamsDefault  # (the stubs only accept literal keys)
    return {key: defaults[key] for key in _PINNED_RC_KEYS}


def layout(tex: str, *, font_size_pt: float, dpi: float) -> Layout:
    """Lay out ``tex`` (mathtext syntax, without the ``$`` delimiters) in Computer Modern.

    Args:
        tex: the expression, e.g. ``r"\\dfrac{x^{2}}{3}"``.
        font_size_pt: font size in TeX points (LaTeX's default is 10).
        dpi: pixels per inch.

    Raises:
        ValueError: mathtext could not parse ``tex``.
    """
    import matplotlib as mpl

    prop = _font_properties(tex_points_to_mpl_points(font_size_pt))
    pinned: Any = _pinned_rc()
    current: Any = mpl.rcParams
    if all(current[key] == value for key, value in pinned.items()):
        vp = _vector_parser().parse(f"${tex}$", dpi=dpi, prop=prop)
    else:  # entering rc_context costs more than checking, so only when needed
        with mpl.rc_context(pinned):
            vp = _vector_parser().parse(f"${tex}$", dpi=dpi, prop=prop)
    # VectorParse has y upwards from the bottom of the box (height includes depth);
    # convert to y downwards from the top, as in an image.
    ascent = float(vp.height) - float(vp.depth)
    glyphs = tuple(
        PlacedGlyph(
            font=font,
            fontsize=float(size),
            glyph_index=int(gidx),
            char_code=int(code),
            x=float(x),
            # matplotlib adds the glyph's vertical offset into y; the raster backend
            # subtracts it again together with the bearing, so we undo it the same way.
            baseline=ascent - float(y),
        )
        for font, size, code, gidx, x, y in vp.glyphs
    )
    rules = tuple(
        PlacedRule(x=float(x), top=ascent - float(y) - float(h), width=float(w), height=float(h))
        for x, y, w, h in vp.rects
    )
    return Layout(float(vp.width), float(vp.height), float(vp.depth), glyphs, rules)


@dataclass(frozen=True)
class _GlyphBitmap:
    """A glyph's antialiased coverage, cropped to its nonzero pixels."""

    coverage: np.ndarray  # uint8, (rows, cols)
    dy: int  # row of coverage[0] relative to the glyph's drawing row
    dx: int  # column of coverage[0, 0] relative to the pen column
    bearing_y: float  # pixels from the baseline up to the glyph's top


@functools.lru_cache(maxsize=4096)
def _glyph_bitmap(font: Any, fontsize: float, glyph_index: int, dpi: float) -> _GlyphBitmap:
    """FreeType coverage of one glyph (cached: there are few distinct (font, size, glyph))."""
    from matplotlib.ft2font import LoadFlags

    font.set_size(fontsize, dpi)
    glyph = font.load_glyph(glyph_index, flags=LoadFlags.NO_HINTING)
    # Glyph metrics are in 26.6 fixed point. The scratch canvas is generous on every
    # side so nothing is clipped, whatever the bearings.
    margin = 4
    left = int(math.ceil(abs(glyph.horiBearingX) / 64))
    rows = int(math.ceil(glyph.height / 64)) + 2 * margin
    cols = int(math.ceil(glyph.width / 64)) + left + 2 * margin
    scratch = np.zeros((rows, cols), np.uint8)
    font.draw_glyph_to_bitmap(scratch, margin + left, margin, glyph, antialiased=True)
    ys, xs = np.nonzero(scratch)
    if len(ys) == 0:
        coverage = np.zeros((0, 0), np.uint8)
        return _GlyphBitmap(coverage, 0, 0, glyph.horiBearingY / 64)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    coverage = scratch[y0:y1, x0:x1].copy()
    coverage.setflags(write=False)
    return _GlyphBitmap(
        coverage, int(y0) - margin, int(x0) - margin - left, glyph.horiBearingY / 64
    )


Box = tuple[int, int, int, int]  # (row0, row1, col0, col1), half-open, in image pixels


def _nonzero_box(mask: np.ndarray, row0: int, col0: int) -> Box | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows) == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return (
        row0 + int(rows[0]),
        row0 + int(rows[-1]) + 1,
        col0 + int(cols[0]),
        col0 + int(cols[-1]) + 1,
    )


def rasterise(
    lay: Layout,
    shape: tuple[int, int],
    origin: tuple[float, float],
    *,
    dpi: float,
    box_threshold: int,
) -> tuple[np.ndarray, list[Box | None], list[Box | None]]:
    """Draw ``lay`` onto a blank canvas with its box's top left corner at ``origin``.

    Anything outside the canvas is clipped (``origin`` may be negative).

    Args:
        lay: the layout.
        shape: (rows, cols) of the canvas.
        origin: (row, col) of the layout's top left corner, in pixels (may be fractional).
        dpi: the dpi the layout was made at.
        box_threshold: a pixel belongs to a glyph's box when its coverage (0-255) of that
            glyph exceeds this.

    Returns:
        ``(coverage, glyph_boxes, rule_boxes)``: the uint8 ink coverage (0 = blank,
        255 = full ink; overlapping glyphs combine by maximum), and for every glyph and
        rule of ``lay``, in order, its box ``(row0, row1, col0, col1)`` over the visible
        pixels above ``box_threshold``, or None where none is visible.
    """
    height, width = shape
    oy, ox = origin
    canvas = np.zeros(shape, np.uint8)
    glyph_boxes: list[Box | None] = []
    for g in lay.glyphs:
        bm = _glyph_bitmap(g.font, g.fontsize, g.glyph_index, dpi)
        # Same placement as matplotlib's raster output: the glyph's top row is the
        # baseline minus the bearing, truncated to a whole pixel; the pen position too.
        r0 = math.floor(oy + g.baseline - bm.bearing_y) + bm.dy
        c0 = math.floor(ox + g.x) + bm.dx
        rows, cols = bm.coverage.shape
        rr0, rr1 = max(r0, 0), min(r0 + rows, height)
        cc0, cc1 = max(c0, 0), min(c0 + cols, width)
        if rr0 >= rr1 or cc0 >= cc1:
            glyph_boxes.append(None)
            continue
        piece = bm.coverage[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0]
        target = canvas[rr0:rr1, cc0:cc1]
        np.maximum(target, piece, out=target)
        glyph_boxes.append(_nonzero_box(piece > box_threshold, rr0, cc0))
    rule_boxes: list[Box | None] = []
    for rule in lay.rules:
        # matplotlib draws a rule as whole pixel rows: one row when it is under two
        # pixels thick (centred on the rule), and both ends of the span inclusive.
        top = oy + rule.top
        extra_rows = max(int(rule.height) - 1, 0)
        if extra_rows == 0:
            r0 = math.floor(top + rule.height / 2 - 0.5)
        else:
            r0 = math.floor(top)
        r1 = r0 + extra_rows + 1
        c0 = math.floor(ox + rule.x)
        c1 = math.ceil(ox + rule.x + rule.width) + 1
        rr0, rr1 = max(r0, 0), min(r1, height)
        cc0, cc1 = max(c0, 0), min(c1, width)
        if rr0 >= rr1 or cc0 >= cc1:
            rule_boxes.append(None)
            continue
        canvas[rr0:rr1, cc0:cc1] = 255
        rule_boxes.append((rr0, rr1, cc0, cc1))
    return canvas, glyph_boxes, rule_boxes
