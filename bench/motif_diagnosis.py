"""Where a DigitCircle model's errors come from: the order of the digits, or which digits.

    .venv/bin/python bench/motif_diagnosis.py CHECKPOINT_OR_EXPORT [--samples N]
        [--data-seed S] [--out FILE.json]

For ``--samples`` validation images (default 300) it decodes each and sorts the result
into *exact*, *order* (the right digits in the wrong order) and *set* (a digit missing
or extra); and it reads the sparse activations: how many survive per image, the share
inside a digit's box, the share of digits with at least one activation in their box, and
a digit x channel count of the activations in boxes (which channel fires on which digit),
with the median value of those activations (one channel firing strongly on one digit
and weakly on another stands for both, told apart by magnitude).
A model on the plateau that knows which digits are present but not their order shows
mostly *order* errors; one whose ``g`` has not found the digits shows activations
outside the boxes. The record is printed and, with ``--out``, written as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import benchlib  # noqa: F401  (puts the repository on sys.path)


def diagnose(model: Any, samples: list[Any], batch: int = 50) -> dict[str, Any]:
    import numpy as np
    import torch

    from sparling.scoring import collate_inputs

    kinds: Counter[str] = Counter()
    channels = int(model.g.conv_out.out_channels)
    matrix = np.zeros((10, channels), dtype=np.int64)
    values: dict[tuple[int, int], list[float]] = {}
    total = inside = digits = found = 0
    with torch.no_grad():
        for start in range(0, len(samples), batch):
            chunk = samples[start : start + batch]
            x = collate_inputs(chunk)
            predictions = model.decode(x, 12)
            maps = model.motifs(x)
            for pred, sample, m in zip(predictions, chunk, maps):
                truth = sample.tokens
                kind = (
                    "exact"
                    if pred == truth
                    else "order"
                    if sorted(pred) == sorted(truth)
                    else "set"
                )
                kinds[kind] += 1
                active = (m > 0).nonzero().tolist()
                total += len(active)
                for c, r, col in active:
                    for motif in sample.motifs:
                        rows, cols = motif.slices
                        if rows.start <= r < rows.stop and cols.start <= col < cols.stop:
                            inside += 1
                            matrix[int(motif.symbol), c] += 1
                            values.setdefault((int(motif.symbol), c), []).append(
                                float(m[c, r, col])
                            )
                            break
                for motif in sample.motifs:
                    rows, cols = motif.slices
                    digits += 1
                    found += bool((m[:, rows, cols] > 0).any())
    n = len(samples)
    return {
        "samples": n,
        "decoded": {k: kinds[k] / n for k in ("exact", "order", "set")},
        "activations_per_image": total / n,
        "share_inside_boxes": inside / max(total, 1),
        "digits_with_an_activation": found / max(digits, 1),
        "digit_by_channel": matrix.tolist(),
        "median_value_digit_by_channel": [
            [
                round(float(np.median(values[d, c])), 3) if (d, c) in values else None
                for c in range(channels)
            ]
            for d in range(10)
        ],
    }


def load(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from sparling.export import load_model

        return load_model(path)
    from sparling.evaluate import load_model as load_checkpoint_model

    return load_checkpoint_model(path)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("model", type=Path, help="a checkpoint folder or a .safetensors export")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error(f"--samples must be at least 1, got {args.samples}")
    import torch

    from sparling import domains

    torch.set_num_threads(args.threads)
    model = load(args.model)
    val = domains.make("digit-circle", split="val")
    samples = [val.sample(args.data_seed, i) for i in range(args.samples)]
    record = {"model": str(args.model), "data_seed": args.data_seed, **diagnose(model, samples)}
    text = json.dumps(record, indent=1)
    print(text)
    if args.out:
        from sparling.fileio import atomic_write_text

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
