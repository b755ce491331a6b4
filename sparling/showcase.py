"""What a trained model found, shown at a glance: scores, one image, its confusion matrix.

``showcase(paths)`` loads exported models (``sparling export``), scores each on test
images generated now, prints a table (FPE, FNE, CE, E2EE, exact match, density), draws
one test image per model in the terminal with each surviving activation marked by the
digit its channel was assigned, and writes the figures (activations over the image,
confusion matrix) next to a JSON of the scores. ``sparling demo`` starts with it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .domains import Sample


def render_text(
    sample: Sample, acts: np.ndarray, channel_to_symbol: dict[int, str], cell: int = 2
) -> str:
    """An image (H, W) as text, ``cell`` pixels a character across and twice that down:
    ``#`` mostly ink, ``.`` some ink, and wherever an activation survived, the symbol its
    strongest channel there was assigned (``?`` for an unassigned channel)."""
    x = np.asarray(sample.x, dtype=np.float32)
    h, w = x.shape
    ch, cw = 2 * cell, cell
    rows = []
    for r in range(0, h, ch):
        line = []
        for c in range(0, w, cw):
            block = acts[:, r : r + ch, c : c + cw]
            if block.size and block.max() > 0:
                channel = int(block.reshape(block.shape[0], -1).max(axis=1).argmax())
                line.append(channel_to_symbol.get(channel, "?"))
                continue
            ink = float(x[r : r + ch, c : c + cw].mean())
            line.append("#" if ink > 0.5 else "." if ink > 0.15 else " ")
        rows.append("".join(line).rstrip())
    return "\n".join(rows)


def showcase(
    paths: Sequence[Path],
    out_dir: Path,
    *,
    samples: int = 500,
    data_seed: int | None = None,
    stream: TextIO | None = None,
) -> list[dict[str, Any]]:
    """Score each exported model on ``samples`` fresh test images and show what it found."""
    import sys

    from .evaluate import plot_activations, plot_confusion
    from .export import evaluate_export

    stream = stream or sys.stdout
    rows: list[dict[str, Any]] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in paths:
        model, domain, result = evaluate_export(path, samples=samples, data_seed=data_seed)
        config = model.run_config
        assert config is not None
        m = result.metrics
        row = {
            "model": Path(path).name,
            "method": config.bottleneck.name,
            "seed": config.seed,
            "trained_samples": int(m["checkpoint_samples"]),
            "checkpoint_density": m["checkpoint_density"],
            **{k: m[k] for k in ("fpe", "fne", "ce", "e2ee", "accuracy", "density")},
            "test_samples": int(m["samples"]),
        }
        rows.append(row)
        stem = Path(path).stem
        figures = []
        if result.example is not None:
            sample, acts = result.example
            figures.append(
                plot_activations(
                    sample, acts, result.errors, domain, out_dir / f"{stem}-activations.png"
                )
            )
            if domain.kind == "image":
                print(
                    f"\n{stem}: test image 0, true output {' '.join(sample.tokens)}; "
                    "each surviving activation drawn as the digit its channel was assigned",
                    file=stream,
                )
                print(render_text(sample, acts, result.errors.channel_to_symbol), file=stream)
        figures.append(plot_confusion(result.errors, out_dir / f"{stem}-confusion.png"))
        print(
            f"{stem}: confusion matrix and activations: {', '.join(map(str, figures))}",
            file=stream,
        )
    (out_dir / "scores.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n{format_table(rows)}", file=stream)
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The showcase's scores as an aligned text table (errors in %)."""
    head = ["model", "samples", "density", "FPE %", "FNE %", "CE %", "E2EE %", "exact %"]
    body = [
        [
            r["model"],
            f"{r['trained_samples']:,}",
            f"{r['density']:.2e}",
            *(f"{100 * r[k]:.2f}" for k in ("fpe", "fne", "ce", "e2ee", "accuracy")),
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(x).rjust(w) for x, w in zip(line, widths)) for line in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
