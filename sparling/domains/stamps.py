"""Digit stamps for DigitCircle: rendering the project's own set, loading and validating sets.

A *stamp set* maps each digit "0".."9" to a small 2-D boolean bitmap (True = ink). The
paper used FreeMono glyphs rasterised with Pillow (12 rows x 7-9 columns, the glyph's
ink bounding box plus a one-pixel blank border). That font is not something a Python
install can rely on, so the project renders its own default set from DejaVu Sans Mono,
which matplotlib ships inside its wheel together with its own FreeType build: with
matplotlib pinned, :func:`render_stamps` gives the same bits on every machine, and a
test checks that the committed file ``assets/digit_stamps.npz`` still equals a fresh
rendering.

Rewrite the committed file with ``python -m sparling.domains.stamps`` (``--check`` only
compares).
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

import numpy as np

from .base import DomainError

#: The symbols a stamp set must define, in vocabulary order.
DIGITS: tuple[str, ...] = tuple("0123456789")

#: Where the project's default stamp set lives (committed, shipped as package data).
DEFAULT_STAMPS_PATH = Path(__file__).resolve().parent / "assets" / "digit_stamps.npz"

#: Font file inside matplotlib's data directory (mpl-data/fonts/ttf).
FONT_FILE = "DejaVuSansMono.ttf"
#: Em size in pixels (points at 72 dpi). 14 px gives digits 10 pixels tall, hence 12-row
#: stamps with the border, like the paper's FreeMono stamps.
FONT_SIZE_PX = 14
#: A pixel is ink when FreeType's anti-aliased coverage exceeds this (of 255): i.e. more
#: than half covered. This gives a mean ink fraction of about 0.256, close to the paper
#: set's 0.250, so the pre-noise level (a multiple of it) stays comparable.
INK_THRESHOLD = 127

Stamps = dict[str, np.ndarray]


def font_path() -> Path:
    """Path of the DejaVu Sans Mono file bundled with matplotlib (never a system font)."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / FONT_FILE
    if not path.is_file():  # pragma: no cover - only with a broken matplotlib install
        raise FileNotFoundError(f"matplotlib's bundled font {path} is missing")
    return path


def render_glyph(
    char: str,
    *,
    size_px: int = FONT_SIZE_PX,
    threshold: int = INK_THRESHOLD,
    font_file: Path | None = None,
) -> np.ndarray:
    """Rasterise one character with matplotlib's FreeType and binarise it.

    Returns the ink bounding box with a one-pixel blank border on every side (as the
    paper's stamps have), as a boolean array.
    """
    from matplotlib.ft2font import FT2Font, LoadFlags

    # A fresh face per glyph: FT2Font keeps the previous text's state otherwise.
    font = FT2Font(str(font_file or font_path()))
    font.set_size(size_px, 72)  # points at 72 dpi == pixels
    # LoadFlags.DEFAULT: the font's own TrueType hinting, which snaps DejaVu's stems to
    # whole pixels and reads better at this size than the auto-hinter.
    font.set_text(char, 0.0, flags=LoadFlags.DEFAULT)
    font.draw_glyphs_to_bitmap(antialiased=True)
    ink = np.asarray(font.get_image()) > threshold
    rows, cols = np.nonzero(ink)
    if rows.size == 0:
        raise DomainError(f"glyph {char!r} rendered with no ink at {size_px} px")
    out = np.zeros((rows.max() - rows.min() + 3, cols.max() - cols.min() + 3), dtype=bool)
    out[1:-1, 1:-1] = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    return out


def render_stamps(
    *, size_px: int = FONT_SIZE_PX, threshold: int = INK_THRESHOLD, font_file: Path | None = None
) -> Stamps:
    """The project's default stamp set, rendered afresh (see the module docstring)."""
    return {
        d: render_glyph(d, size_px=size_px, threshold=threshold, font_file=font_file)
        for d in DIGITS
    }


def validate_stamps(stamps: dict[str, np.ndarray], source: str) -> Stamps:
    """Check a stamp set and return it as C-contiguous boolean arrays keyed "0".."9".

    Accepts boolean arrays, or integer arrays holding only 0 and 1 (e.g. uint8 images).
    Raises ``ValueError`` naming ``source`` and what is expected.
    """
    expect = 'keys "0".."9" exactly, each a non-empty 2-D boolean (or 0/1 integer) array'
    keys = set(stamps)
    if keys != set(DIGITS):
        missing = sorted(set(DIGITS) - keys)
        extra = sorted(keys - set(DIGITS))
        raise DomainError(
            f"bad stamp set {source}: expected {expect}; missing keys {missing}, unexpected keys {extra}"
        )
    out: Stamps = {}
    for d in DIGITS:
        a = np.asarray(stamps[d])
        if a.ndim != 2 or a.size == 0:
            raise DomainError(
                f"bad stamp set {source}: expected {expect}; key {d!r} has shape {a.shape}"
            )
        if a.dtype != np.bool_:
            if not np.issubdtype(a.dtype, np.integer):
                problem = f"has dtype {a.dtype}"
            elif not np.isin(a, (0, 1)).all():
                problem = f"has dtype {a.dtype} with values other than 0 and 1"
            else:
                problem = ""
            if problem:
                raise DomainError(f"bad stamp set {source}: expected {expect}; key {d!r} {problem}")
        out[d] = np.ascontiguousarray(a, dtype=bool)
    return out


def load_stamps(path: str | Path | None = None) -> Stamps:
    """Load a stamp set from an ``.npz`` (``None``: the project's default set).

    Any problem with the file (missing, not an npz, wrong keys, shapes or dtypes) is a
    ``ValueError`` naming the path and what is expected.
    """
    p = DEFAULT_STAMPS_PATH if path is None else Path(path)
    if not p.is_file():
        raise DomainError(
            f"stamps file {str(p)!r} does not exist (expected an .npz of digit stamps)"
        )
    try:
        # allow_pickle=False: a stamp file is data, never code.
        data = np.load(p, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise DomainError(f"found a single {type(data).__name__}, not an .npz archive")
        with data:
            raw = {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DomainError(
            f"cannot read stamps file {str(p)!r} as an .npz of digit stamps: {e}"
        ) from None
    return validate_stamps(raw, repr(str(p)))


def save_stamps(stamps: Stamps, path: str | Path) -> None:
    """Write a stamp set as a compressed ``.npz`` of boolean arrays keyed by digit."""
    checked = validate_stamps(stamps, "to save")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **checked)  # type: ignore[arg-type]


def ink_fraction(stamps: Stamps) -> float:
    """Mean over stamps of each stamp's ink fraction: the authors' "background percent",
    whose multiple is the pre-noise ink probability (an unweighted mean, not pooled)."""
    return float(np.mean([np.mean(stamps[d]) for d in sorted(stamps)]))


def max_extent(stamps: Stamps) -> int:
    """Largest side of any stamp: the authors pad the circle by this (plus the shift)."""
    return int(max(max(a.shape) for a in stamps.values()))


def same_stamps(a: Stamps, b: Stamps) -> bool:
    """Whether two stamp sets are bit-for-bit identical (keys, shapes and values)."""
    return set(a) == set(b) and all(
        a[k].shape == b[k].shape and bool(np.array_equal(a[k], b[k])) for k in a
    )


def to_text(stamps: Stamps) -> str:
    """The set drawn side by side in ``#``/``.`` (for eyeballing and for reports)."""
    keys = sorted(stamps)
    rows = max(stamps[k].shape[0] for k in keys)
    lines = []
    for i in range(rows):
        cells = []
        for k in keys:
            a = stamps[k]
            cells.append(
                "".join("#" if v else "." for v in a[i]) if i < a.shape[0] else " " * a.shape[1]
            )
        lines.append("  ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m sparling.domains.stamps [--out PATH] [--check]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_STAMPS_PATH, help="file to write")
    parser.add_argument(
        "--check", action="store_true", help="only compare a fresh rendering with --out"
    )
    args = parser.parse_args(argv)
    fresh = render_stamps()
    print(to_text(fresh))
    print("shapes:", {k: v.shape for k, v in fresh.items()})
    print(f"ink fraction: {ink_fraction(fresh):.6f}")
    if args.check:
        same = args.out.is_file() and same_stamps(load_stamps(args.out), fresh)
        print(f"{args.out}: {'identical' if same else 'DIFFERS from a fresh rendering'}")
        return 0 if same else 1
    save_stamps(fresh, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
