"""Learning curves: validation exact match against training samples, at a fixed density.

    .venv/bin/python bench/learning_curve.py run SETTING [--preset fast] [--set KEY=VALUE ...]
        [--samples N] [--eval-every N] [--val-size N] [--batch N] [--lr LR]
        [--warmup N] [--train-size N] [--seed S] [--threads T] [--label NAME]
        [--init CHECKPOINT] [--ideal-inside K] [--ideal-outside K]
    .venv/bin/python bench/learning_curve.py plot [RECORD.json ...] [--out FILE.png]

SETTING is one of

- ``sparling``: the full model ``h(sparse(g(x)))`` with Sparling's bottleneck held at
  ``--density`` (default 0.5, the density every AST run starts at; no schedule);
- ``non-sparse``: the full model with the non-sparse bottleneck (batch norm only);
- ``h-ideal``: ``h`` alone, fed ideal motif maps: one activation of 1 per true digit,
  at the centre of its box, in the channel of its digit. This separates how fast ``h``
  learns *where* things are from how fast ``g`` learns *what* they are.

It is the instrument for choosing the ``fast`` preset and the schedule's settings: the
number of samples a model needs before AST may start cutting the density. Training
follows :class:`sparling.train.Trainer` (AdamW, linear warm-up, gradient clipping at 1)
on samples generated on the fly from the domain's train split: by default every sample
is fresh (stream position i is sample i), as in the paper; ``--train-size N`` repeats a
set of N instead, in seeded shuffled epochs. Validation is greedy decoding on
``--val-size`` samples of the val split. Each evaluation is printed as it happens and
written to ``docs/learning-curve/LABEL.json`` (``samples``, ``exact_match``, ``loss``,
wall time), with the samples to 50% and to 95% exact match. ``plot`` draws every record
in ``docs/learning-curve/`` (or those named) into ``docs/img/learning-curve.png``.

``--set`` takes model overrides of the preset (``position=fourier``, ``width=8``, ...).
A measurement, not a pipeline run: no Ray, MLflow or checkpoints.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchlib
from benchlib import REPO

RECORDS = REPO / "docs" / "learning-curve"
FIGURE = REPO / "docs" / "img" / "learning-curve.png"
SETTINGS = ("sparling", "non-sparse", "h-ideal")
THRESHOLDS = (0.5, 0.95)


def ideal_maps(samples: list[Any], channels: int, shape: tuple[int, int]) -> Any:
    """One activation per true digit at its box centre, channel = the digit: (N, C, H, W)."""
    import torch

    maps = torch.zeros(len(samples), channels, *shape)
    for i, s in enumerate(samples):
        for m in s.motifs:
            rows, cols = m.slices
            r = (rows.start + rows.stop - 1) // 2
            c = (cols.start + cols.stop - 1) // 2
            maps[i, int(m.symbol), min(max(r, 0), shape[0] - 1), min(max(c, 0), shape[1] - 1)] = 1
    return maps


def noisy_maps(
    samples: list[Any], channels: int, shape: tuple[int, int], inside: int, outside: int
) -> Any:
    """:func:`ideal_maps` with the clutter of a real ``g``: per digit, ``inside`` more
    activations at random places in its box, each in the digit's channel or (half the
    time) another one; per image, ``outside`` activations at random places and channels.
    Values uniform in [0.2, 1]. Random but a pure function of each sample (its index)."""
    import numpy as np

    maps = ideal_maps(samples, channels, shape)
    for i, s in enumerate(samples):
        key = repr([s.tokens, [(m.slices[0].start, m.slices[1].start) for m in s.motifs]])
        rng = np.random.default_rng([0x51, zlib.crc32(key.encode())])
        for m in s.motifs:
            rows, cols = m.slices
            for _ in range(inside):
                ch = int(m.symbol) if rng.random() < 0.5 else int(rng.integers(channels))
                r = int(rng.integers(max(rows.start, 0), min(rows.stop, shape[0])))
                c = int(rng.integers(max(cols.start, 0), min(cols.stop, shape[1])))
                maps[i, ch, r, c] = max(float(maps[i, ch, r, c]), float(rng.uniform(0.2, 1)))
        for _ in range(outside):
            ch, r, c = (
                int(rng.integers(channels)),
                int(rng.integers(shape[0])),
                int(rng.integers(shape[1])),
            )
            maps[i, ch, r, c] = max(float(maps[i, ch, r, c]), float(rng.uniform(0.2, 1)))
    return maps


def samples_to(curve: list[dict[str, Any]], level: float) -> int | None:
    """The first evaluated sample count at which exact match reached ``level``."""
    return next((r["samples"] for r in curve if r["exact_match"] >= level), None)


def run(
    args: argparse.Namespace,
    overrides: dict[str, Any],
    on_eval: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    import numpy as np
    import torch

    from sparling import domains
    from sparling.models import build_model, sequence_loss
    from sparling.scoring import collate_inputs
    from sparling.seeding import set_seed

    benchlib.set_threads(args.threads)
    train_domain = domains.make("digit-circle", split="train")
    val_domain = domains.make("digit-circle", split="val")
    val = [val_domain.sample(args.data_seed, i) for i in range(args.val_size)]
    set_seed(args.seed)
    bottleneck = "non-sparse" if args.setting == "non-sparse" else "sparling"
    params = {"density": args.density} if bottleneck == "sparling" else {}
    model = build_model(train_domain, args.preset, bottleneck, params, **overrides)
    ideal = args.setting == "h-ideal"
    clutter = (args.ideal_inside, args.ideal_outside)

    def maps_for(batch: list[Any]) -> Any:
        if clutter == (0, 0):
            return ideal_maps(batch, channels, shape)
        return noisy_maps(batch, channels, shape, *clutter)

    channels = model.g.conv_out.out_channels
    shape = train_domain.input_shape
    trained = model.h if ideal else model
    if args.init:
        from sparling.checkpoint import load_checkpoint

        state, _ = load_checkpoint(args.init)
        model.load_state_dict(state["model"])
    opt = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad], lr=args.lr)
    rng = np.random.default_rng([args.seed, 0x1C])
    order = rng.permutation(args.train_size) if args.train_size else None

    def stream_index(pos: int) -> int:
        if order is None:
            return pos
        epoch, offset = divmod(pos, args.train_size)
        if offset == 0 and epoch > 0:  # a fresh permutation per epoch
            order[:] = np.random.default_rng([args.seed, 0x1C, epoch]).permutation(args.train_size)
        return int(order[offset])

    def forward(batch: list[Any]) -> Any:
        ids = model.token_ids([s.tokens for s in batch])
        if ideal:
            return model.h(maps_for(batch), ids[:, :-1]), ids
        return model(collate_inputs(batch), ids), ids

    @torch.no_grad()
    def evaluate() -> tuple[float, float]:
        model.eval()
        correct, loss_sum, count = 0, 0.0, 0
        for start in range(0, len(val), 100):
            batch = val[start : start + 100]
            logits, ids = forward(batch)
            loss_sum += float(sequence_loss(logits, ids[:, 1:])) * len(batch)
            if ideal:
                memory, bias = model.h.encode_with_bias(maps_for(batch))
                out = model.h.greedy_decode(memory, 12, bias)
                pred = model.tokenizer.decode_batch(out)
            else:
                pred = model.decode(collate_inputs(batch), 12)
            correct += sum(p == s.tokens for p, s in zip(pred, batch))
            count += len(batch)
        model.train()
        return correct / count, loss_sum / count

    label = args.label or args.setting
    summary = _summary(args, overrides)
    curve: list[dict[str, Any]] = []
    start_time = time.monotonic()
    train_seconds = 0.0
    pos = 0
    running = math.nan
    model.train()
    while pos < args.samples:
        step_start = time.monotonic()
        batch = [
            train_domain.sample(args.data_seed, stream_index(pos + i)) for i in range(args.batch)
        ]
        lr = args.lr * min(1.0, (pos + args.batch) / args.warmup) if args.warmup else args.lr
        for group in opt.param_groups:
            group["lr"] = lr
        logits, ids = forward(batch)
        loss = sequence_loss(logits, ids[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained.parameters(), 1.0)
        opt.step()
        pos += args.batch
        value = float(loss.detach())
        running = value if math.isnan(running) else 0.98 * running + 0.02 * value
        train_seconds += time.monotonic() - step_start
        if pos % args.eval_every < args.batch or pos >= args.samples:
            acc, val_loss = evaluate()
            curve.append(
                {
                    "samples": pos,
                    "exact_match": acc,
                    "val_loss": round(val_loss, 5),
                    "train_loss": round(running, 5),
                    "train_seconds": round(train_seconds, 1),
                    "wall_seconds": round(time.monotonic() - start_time, 1),
                }
            )
            print(
                f"[{label}] samples={pos} exact_match={acc:.3f} val_loss={val_loss:.4f} "
                f"train_loss={running:.4f} {pos / train_seconds:.1f} samples/s "
                f"t={time.monotonic() - start_time:.0f}s",
                flush=True,
            )
            if on_eval is not None:
                on_eval(summary(curve, pos, train_seconds))
            if args.stop_at and acc >= args.stop_at:
                break
    return summary(curve, pos, train_seconds)


def _summary(args: argparse.Namespace, overrides: dict[str, Any]) -> Any:
    from sparling.models.presets import preset_config

    def summary(curve: list[dict[str, Any]], pos: int, train_seconds: float) -> dict[str, Any]:
        return {
            "label": args.label or args.setting,
            "setting": args.setting,
            "preset": args.preset,
            "overrides": overrides,
            # the preset as resolved when measured (presets change; records must not)
            "architecture": preset_config(
                "digit-circle", args.preset, channels=10, **overrides
            ).model_dump(mode="json"),
            "density": args.density if args.setting == "sparling" else None,
            "batch_size": args.batch,
            "lr": args.lr,
            "warmup_samples": args.warmup,
            "train_size": args.train_size or "fresh",
            "seed": args.seed,
            "data_seed": args.data_seed,
            "val_size": args.val_size,
            "init": str(args.init) if args.init else None,
            "ideal_clutter": {"inside": args.ideal_inside, "outside": args.ideal_outside},
            "threads": args.threads,
            "samples_per_s": round(pos / max(train_seconds, 1e-9), 1),
            "samples_to": {f"{int(t * 100)}%": samples_to(curve, t) for t in THRESHOLDS},
            "curve": curve,
        }

    return summary


def plot(paths: list[Path], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(p.read_text())["results"][0] for p in paths]
    fig, (ax, lx) = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = plt.get_cmap("tab20").colors
    for k, res in enumerate(sorted(records, key=lambda r: r["label"])):
        xs = [c["samples"] / 1000 for c in res["curve"]]
        # a curve started from a run's weights counts its samples from there
        label = res["label"] + (" (from a checkpoint)" if res.get("init") else "")
        style = {"marker": ".", "label": label, "color": colours[k % len(colours)]}
        ax.plot(xs, [100 * c["exact_match"] for c in res["curve"]], **style)
        lx.plot(xs, [c["val_loss"] for c in res["curve"]], **style)
    ax.axhline(95, color="grey", lw=0.6, ls="--")
    ax.set_ylabel("validation exact match (%)")
    ax.set_ylim(0, 100)
    lx.set_ylabel("validation loss (cross-entropy per token)")
    lx.set_ylim(bottom=0)
    for a in (ax, lx):
        a.set_xlabel("training samples (thousands)")
        a.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("DigitCircle learning curves (bench/learning_curve.py; density 0.5 unless named)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train one setting and record its learning curve")
    r.add_argument("setting", choices=SETTINGS)
    r.add_argument("--preset", default="fast", choices=("fast", "paper"))
    r.add_argument(
        "--density", type=float, default=0.5, help="sparling: the density held (AST starts at 0.5)"
    )
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument("--samples", type=int, default=50_000)
    r.add_argument("--eval-every", type=int, default=2_000)
    r.add_argument("--val-size", type=int, default=500)
    r.add_argument("--batch", type=int, default=16)
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--warmup", type=int, default=2_000)
    r.add_argument("--train-size", type=int, default=0, help="0: every sample fresh")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--data-seed", type=int, default=0)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--stop-at", type=float, default=0.0, help="stop once exact match >= this")
    r.add_argument("--label", default="")
    r.add_argument(
        "--ideal-inside",
        type=int,
        default=0,
        metavar="K",
        help="h-ideal: K more activations at random in each digit's box (half in other channels)",
    )
    r.add_argument(
        "--ideal-outside",
        type=int,
        default=0,
        metavar="K",
        help="h-ideal: K activations per image at random places and channels",
    )
    r.add_argument(
        "--init",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="start from the model weights of a checkpoint folder (e.g. RUN/checkpoints/last)",
    )
    p = sub.add_parser("plot", help="draw the recorded curves")
    p.add_argument("records", nargs="*", type=Path)
    p.add_argument("--out", type=Path, default=FIGURE)
    args = parser.parse_args(argv)

    if args.command == "plot":
        paths = args.records or sorted(RECORDS.glob("*.json"))
        if not paths:
            parser.error(f"no records given and none in {RECORDS}")
        print(plot(paths, args.out))
        return 0

    from sparling.fileio import load_yaml

    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set takes KEY=VALUE, got {item!r}")
        overrides[key] = load_yaml(value, source=f"--set {key}")
    out = RECORDS / f"{args.label or args.setting}.json"

    def write(result: dict[str, Any]) -> None:
        benchlib.write_report(out, argv=argv, load_before=None, results=[result], settings={})

    result = run(args, overrides, on_eval=write)
    write(result)
    print(f"samples to 50%/95%: {result['samples_to']} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
