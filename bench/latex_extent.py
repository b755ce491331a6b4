"""LaTeX-OCR: how far a motif reaches, against the context radius of ``g``.

    .venv/bin/python bench/latex_extent.py [--samples N] [--seed S] [--out FILE.json]

``g`` decides each output position from the pixels within its context radius ``r`` of it
(a (2r + 1) x (2r + 1) window; the paper's LaTeX model has ``r`` = 32 at 120x360). This
renders ``--samples`` expressions (default 2,000, the domain's default parameters, seed
``--seed``) and measures each true motif's ink box (the glyph's, or the fraction bar's,
without the metrics' ``box_pad``): its height and width in pixels per class, and the
share of motifs whose whole box fits in the window of radius ``r`` centred on the box's
centre, for ``r`` in 4..32. A radius that holds every character whole is what the
characters need; the fraction bar, a plain horizontal rule, is recognisable from any
stretch of it. The record is printed and, with ``--out``, written as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import benchlib  # noqa: F401  (puts the repository on sys.path)
import numpy as np

RADII = (4, 6, 8, 10, 12, 16, 24, 32)


def measure(samples: int, seed: int) -> dict[str, Any]:
    from sparling import domains

    domain = domains.make("latex-ocr")
    pad = int(domain.params.box_pad)  # type: ignore[attr-defined]
    sizes: dict[str, list[tuple[int, int]]] = defaultdict(list)
    started = time.perf_counter()
    for index in range(samples):
        sample = domain.sample(seed, index)
        for symbol, (rows, cols) in sample.motifs:
            # the slices are the ink box plus box_pad, clipped at the canvas edge
            height = rows.stop - rows.start - 2 * pad
            width = cols.stop - cols.start - 2 * pad
            sizes[symbol].append((max(height, 1), max(width, 1)))
    seconds = time.perf_counter() - started

    def summary(boxes: list[tuple[int, int]]) -> dict[str, Any]:
        h = np.array([b[0] for b in boxes])
        w = np.array([b[1] for b in boxes])
        # the whole box fits the (2r + 1) window about its centre when both sides <= 2r + 1
        fits = {str(r): float(np.mean((h <= 2 * r + 1) & (w <= 2 * r + 1))) for r in RADII}
        return {
            "count": len(boxes),
            "height_px": {q: int(np.percentile(h, p)) for q, p in (("p50", 50), ("p99", 99))}
            | {"max": int(h.max())},
            "width_px": {q: int(np.percentile(w, p)) for q, p in (("p50", 50), ("p99", 99))}
            | {"max": int(w.max())},
            "whole_within_radius": fits,
        }

    characters = [b for s, bs in sizes.items() if s != "\\frac{" for b in bs]
    return {
        "benchmark": "latex_extent",
        "samples": samples,
        "seed": seed,
        "canvas": list(domain.input_shape),
        "box_pad_excluded": pad,
        "seconds": round(seconds, 1),
        "characters": summary(characters),
        "classes": {s: summary(bs) for s, bs in sorted(sizes.items())},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error(f"--samples must be at least 1 (got {args.samples})")
    record = measure(args.samples, args.seed)
    text = json.dumps(record, indent=1)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
