"""How well can ``g`` tell the digits apart? A supervised probe of the motif model alone.

    .venv/bin/python bench/g_capacity.py [--width 16] [--cr 8] [--samples 20000]
        [--eval-every 2000] [--val-size 300] [--batch 16] [--lr 1e-3] [--threads 1]

Sparling trains ``g`` without any motif labels. This probe gives ``g`` the labels, to
measure the ceiling its size puts on the end-to-end model: each digit's box is scored by
the maximum of every motif channel over the box (10 logits), trained with cross-entropy
against the digit. It reports the share of boxes classified right and the share of images
whose every box is right. If ``g`` cannot name each digit where it is, ``h`` can learn which
digits an image holds (from all of them together) but not which one sits where, so not
their order around the circle. A measurement, not part of the method; records go to
``docs/learning-curve/g-capacity/LABEL.json`` (default label ``g-capacity-w{width}``).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import benchlib
from benchlib import REPO

RECORDS = REPO / "docs" / "learning-curve" / "g-capacity"


def box_logits(maps: Any, samples: list[Any]) -> tuple[Any, Any, list[int]]:
    """Per digit box: each channel's maximum over the box (B, C), its digit (B,), and the
    number of boxes per image."""
    import torch

    rows, labels, counts = [], [], []
    for i, s in enumerate(samples):
        counts.append(len(s.motifs))
        for m in s.motifs:
            r, c = m.slices
            rows.append(maps[i, :, r, c].amax(dim=(1, 2)))
            labels.append(int(m.symbol))
    return torch.stack(rows), torch.tensor(labels), counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--cr", type=int, default=8)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--eval-every", type=int, default=2_000)
    parser.add_argument("--val-size", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--label", default="")
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from sparling import domains
    from sparling.models.motif import MotifConfig, MotifModel
    from sparling.scoring import collate_inputs
    from sparling.seeding import set_seed

    benchlib.set_threads(args.threads)
    train = domains.make("digit-circle", split="train")
    val_domain = domains.make("digit-circle", split="val")
    val = [val_domain.sample(0, i) for i in range(args.val_size)]
    set_seed(args.seed)
    g = MotifModel(1, 10, MotifConfig(width=args.width, cr=args.cr), 2)
    opt = torch.optim.AdamW(g.parameters(), lr=args.lr)
    label = args.label or f"g-capacity-w{args.width}"
    curve: list[dict[str, Any]] = []

    @torch.no_grad()
    def evaluate() -> tuple[float, float]:
        g.eval()
        right, boxes, whole, images = 0, 0, 0, 0
        for start in range(0, len(val), 50):
            batch = val[start : start + 50]
            logits, labels, counts = box_logits(
                g(collate_inputs(batch).float().unsqueeze(1)), batch
            )
            ok = (logits.argmax(1) == labels).tolist()
            right, boxes = right + sum(ok), boxes + len(ok)
            at = 0
            for n in counts:
                whole += all(ok[at : at + n])
                at += n
            images += len(batch)
        g.train()
        return right / boxes, whole / images

    start = time.monotonic()
    pos = 0
    while pos < args.samples:
        batch = [train.sample(0, pos + i) for i in range(args.batch)]
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (pos + args.batch) / 2000)
        logits, labels, _ = box_logits(g(collate_inputs(batch).float().unsqueeze(1)), batch)
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        pos += args.batch
        if pos % args.eval_every < args.batch:
            box_acc, image_acc = evaluate()
            row = {
                "samples": pos,
                "box_accuracy": round(box_acc, 4),
                "all_boxes_right": round(image_acc, 4),
                "train_loss": round(float(loss.detach()), 4),
                "wall_seconds": round(time.monotonic() - start, 1),
            }
            curve.append(row)
            print(f"[{label}] {row}", flush=True)
            RECORDS.mkdir(parents=True, exist_ok=True)
            record = {"command": " ".join(["g_capacity.py", *(argv or [])]), "args": vars(args)}
            (RECORDS / f"{label}.json").write_text(json.dumps({**record, "curve": curve}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
