"""Learning curves: validation exact match against training samples, at a fixed density.

    .venv/bin/python bench/learning_curve.py run SETTING [--domain NAME] [--preset fast]
        [--set KEY=VALUE ...] [--domain-param KEY=VALUE ...] [--audio-root DIR]
        [--samples N] [--eval-every N] [--val-size N] [--test-size N] [--batch N] [--lr LR]
        [--warmup N] [--train-size N] [--seed S] [--threads T] [--label NAME]
        [--init CHECKPOINT] [--ideal-inside K] [--ideal-outside K] [--recalibrate-bn N]
    .venv/bin/python bench/learning_curve.py plot [RECORD.json ...] [--domain NAME] [--out FILE.png]

``--domain`` is any registered domain: ``digit-circle`` (the default), ``latex-ocr`` or
``audio-digits``. SETTING is one of

- ``sparling``: the full model ``h(sparse(g(x)))`` with Sparling's bottleneck held at
  ``--density`` (default 0.5, the density every AST run starts at; no schedule);
- ``non-sparse``: the full model with the non-sparse bottleneck (batch norm only);
- ``h-ideal``: ``h`` alone, fed ideal motif maps: one activation of 1 per true motif, at
  the centre of its slices (its box in an image, its frame span in audio), in the channel
  of its symbol. This separates how fast ``h`` learns *where* things are from how fast
  ``g`` learns *what* they are.

Channels of the ideal maps: a motif class's channel is its place in the domain's
``motif_symbols`` (DigitCircle and audio: digit d in channel d, of 10; LaTeX-OCR: the 16
symbols, ``+``, the two parentheses and the fraction bar in channels 0-19 of its 32, the
other 12 left empty). A model with fewer
channels than the domain has motif classes (``--set channels=N``) is refused for
``h-ideal``: two classes in one channel would make the maps ambiguous, no longer ideal.
``--ideal-inside`` and ``--ideal-outside`` add the clutter of a real ``g``.

It is the instrument for choosing the ``fast`` preset and the schedule's settings: the
number of samples a model needs before AST may start cutting the density. Training
follows :class:`sparling.train.Trainer` (AdamW, linear warm-up, gradient clipping at 1)
on samples generated on the fly from the domain's train split: by default every sample
is fresh (stream position i is sample i), as in the paper; ``--train-size N`` repeats a
set of N instead, in seeded shuffled epochs. Validation is greedy decoding, up to the
domain's longest output plus the end token, on ``--val-size`` samples of the val split;
``--recalibrate-bn N`` first re-estimates ``g``'s batch-norm statistics over the first N
training samples, as a run with ``bn_recalibration_samples: N`` does before each validation.
``--test-size N`` also scores N samples of the test split at each validation
(``test_exact_match`` in the curve): for spoken digits, the held-out speakers, which the val
split never hears.
samples/s counts generating the samples too (LaTeX-OCR renders each one); ``cpu_share``
(the process's CPU time over the wall time of the steps, per thread) says how much of the
machine it had, since on a shared machine wall-clock rates also measure the neighbours.

Each evaluation is printed as it happens and written to the domain's records folder,
``docs/learning-curve/LABEL.json`` for DigitCircle and
``docs/learning-curve/DOMAIN/LABEL.json`` for the others (``samples``, ``exact_match``,
``loss``, wall and CPU time), with the samples to 50% and to 95% exact match and the domain's
name and spec. ``plot`` draws one figure per domain from every record in its folder (or
from the records named): ``docs/img/learning-curve.png`` for DigitCircle,
``docs/img/learning-curve-DOMAIN.png`` for the others.

``--set`` takes model overrides of the preset (``position=fourier``, ``width=8``,
``cr=16``, ``channels=16``, ...); ``--domain-param`` takes the domain's parameters
(``max_length=10`` for LaTeX-OCR, ``clip_seconds=5`` for audio, ...). Audio reads its
recordings from ``--audio-root``, else ``$SPARLING_AUDIO_ROOT``, else the shared Free
Spoken Digit Dataset copy at ``../shared/data/fsdd`` beside the repository.
A measurement, not a pipeline run: no Ray, MLflow or checkpoints.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import benchlib
from benchlib import REPO

RECORDS = REPO / "docs" / "learning-curve"
FIGURE = REPO / "docs" / "img" / "learning-curve.png"
SETTINGS = ("sparling", "non-sparse", "h-ideal")
THRESHOLDS = (0.5, 0.95)
#: the domain of every record written before there was a choice (records without "domain")
DEFAULT_DOMAIN = "digit-circle"
#: figure titles (the names docs/method.md uses); other domains are titled by their name
TITLES = {
    "digit-circle": "DigitCircle",
    "latex-ocr": "LaTeX-OCR",
    "audio-digits": "AudioMNISTSequence",
}


class InputError(ValueError):
    """A command-line value the benchmark cannot use; the message names it and what is accepted."""


# -- where things go -------------------------------------------------------------------------
def records_dir(domain: str) -> Path:
    """A domain's records folder: DigitCircle's at the top (where its records always were)."""
    return RECORDS if domain == DEFAULT_DOMAIN else RECORDS / domain


def figure_path(domain: str) -> Path:
    """A domain's figure: ``learning-curve.png`` for DigitCircle, ``-DOMAIN`` for the others."""
    return FIGURE if domain == DEFAULT_DOMAIN else FIGURE.with_name(f"learning-curve-{domain}.png")


def record_domain(record: Mapping[str, Any]) -> str:
    return str(record.get("domain", DEFAULT_DOMAIN))


# -- domains ---------------------------------------------------------------------------------
def make_domain(
    name: str, split: str, params: Mapping[str, Any], audio_root: str | None = None
) -> Any:
    """The named domain; audio reads ``audio_root``, else ``$SPARLING_AUDIO_ROOT``, else the
    shared FSDD copy. :class:`sparling.domains.DomainError` names what it refuses."""
    from sparling import domains
    from sparling.domains.audio_digits import ROOT_ENV

    cls = domains.get(name)  # an unknown name: the error lists the registered ones
    params = dict(params)
    source = "--domain-param root"
    if cls.kind == "audio":
        if audio_root is not None:
            params["root"], source = audio_root, "--audio-root"
        elif "root" not in params:
            if os.environ.get(ROOT_ENV):
                source = f"${ROOT_ENV}"
            else:
                params["root"], source = str(benchlib.AUDIO_ROOT), "the shared FSDD default"
    elif audio_root is not None:
        audio = [n for n in domains.names() if domains.get(n).kind == "audio"]
        raise InputError(f"--audio-root is for the audio domains ({', '.join(audio)}), not {name}")
    try:
        return domains.make(name, split=split, **params)
    except domains.DomainError as e:
        if cls.kind != "audio" or "folder" not in str(e):
            raise
        raise domains.DomainError(f"{e} (the folder given by {source})") from None


def spatial_shape(domain: Any) -> tuple[int, ...]:
    """The shape of a motif channel: (H, W) for images, (frames,) for audio."""
    shape = tuple(domain.input_shape)
    return shape if domain.kind == "image" else shape[:1]


def decode_length(domain: Any) -> int:
    """Greedy decoding steps: the domain's longest output and its end token."""
    if domain.max_tokens is None:
        raise InputError(f"domain {domain.name} declares no max_tokens, so no decoding length")
    return int(domain.max_tokens) + 1


def symbol_channels(domain: Any, channels: int) -> dict[str, int]:
    """The channel of each motif class in ideal maps: its place in ``motif_symbols``."""
    symbols = list(domain.motif_symbols)
    if len(symbols) > channels:
        raise InputError(
            f"h-ideal needs one channel per motif class: {domain.name} has {len(symbols)} "
            f"({' '.join(symbols)}) and the model {channels}; accepted: --set channels=N "
            f"with N >= {len(symbols)} (the preset gives {domain.paper_channels})"
        )
    return {s: i for i, s in enumerate(symbols)}


# -- ideal motif maps ------------------------------------------------------------------------
def motif_centre(slices: Sequence[slice], shape: Sequence[int]) -> tuple[int, ...]:
    """The centre of a motif's slices, one index per axis, clipped to ``shape``."""
    if len(slices) != len(shape):
        raise ValueError(f"a motif with {len(slices)} slices on maps of shape {tuple(shape)}")
    return tuple(min(max((s.start + s.stop - 1) // 2, 0), n - 1) for s, n in zip(slices, shape))


def ideal_maps(
    samples: Sequence[Any], channel_of: Mapping[str, int], channels: int, shape: Sequence[int]
) -> Any:
    """One activation of 1 per true motif at its centre, in its symbol's channel:
    (N, C, H, W) for images, (N, C, L) for audio."""
    import torch

    maps = torch.zeros(len(samples), channels, *shape)
    for i, s in enumerate(samples):
        for m in s.motifs:
            maps[(i, channel_of[m.symbol], *motif_centre(m.slices, shape))] = 1
    return maps


def noisy_maps(
    samples: Sequence[Any],
    channel_of: Mapping[str, int],
    channels: int,
    shape: Sequence[int],
    inside: int,
    outside: int,
) -> Any:
    """:func:`ideal_maps` with the clutter of a real ``g``: per motif, ``inside`` more
    activations at random places in its slices, each in the motif's channel or (half the
    time) another one; per input, ``outside`` activations at random places and channels.
    Values uniform in [0.2, 1]. Random but a pure function of each sample (its tokens and
    motif positions)."""
    import numpy as np

    maps = ideal_maps(samples, channel_of, channels, shape)

    def add(index: tuple[int, ...], value: float) -> None:
        maps[index] = max(float(maps[index]), value)

    for i, s in enumerate(samples):
        key = repr([s.tokens, [tuple(sl.start for sl in m.slices) for m in s.motifs]])
        rng = np.random.default_rng([0x51, zlib.crc32(key.encode())])
        for m in s.motifs:
            for _ in range(inside):
                ch = channel_of[m.symbol] if rng.random() < 0.5 else int(rng.integers(channels))
                where = tuple(
                    int(rng.integers(max(sl.start, 0), min(sl.stop, n)))
                    for sl, n in zip(m.slices, shape)
                )
                add((i, ch, *where), float(rng.uniform(0.2, 1)))
        for _ in range(outside):
            ch = int(rng.integers(channels))
            where = tuple(int(rng.integers(n)) for n in shape)
            add((i, ch, *where), float(rng.uniform(0.2, 1)))
    return maps


def share(cpu_seconds: float, wall_seconds: float, threads: int = 1) -> float | None:
    """CPU time / (wall time x threads), as :func:`benchlib.time_reps` reports it."""
    return round(cpu_seconds / (wall_seconds * threads), 3) if wall_seconds > 0 else None


def samples_to(curve: list[dict[str, Any]], level: float) -> int | None:
    """The first evaluated sample count at which exact match reached ``level``."""
    return next((r["samples"] for r in curve if r["exact_match"] >= level), None)


# -- a run -----------------------------------------------------------------------------------
@dataclass
class Setup:
    """What a run is built from; :func:`prepare` checks the command line's values."""

    train: Any
    val: Any
    model: Any
    shape: tuple[int, ...]
    max_len: int
    #: h-ideal: the channel of each motif class (None for the full model)
    channel_of: dict[str, int] | None
    #: the test split's domain, when ``--test-size`` asks for it
    test: Any = None


def prepare(args: argparse.Namespace, overrides: dict[str, Any]) -> Setup:
    """Domains and model for ``args``; raises :class:`ValueError` (a ``DomainError``, an
    :class:`InputError`, a model config error) naming a value it cannot use."""
    from sparling.models import build_model
    from sparling.seeding import set_seed

    benchlib.set_threads(args.threads)
    params = getattr(args, "domain_params", {})
    audio_root = getattr(args, "audio_root", None)
    train = make_domain(args.domain, "train", params, audio_root)
    val = make_domain(args.domain, "val", params, audio_root)
    set_seed(args.seed)
    bottleneck = "non-sparse" if args.setting == "non-sparse" else "sparling"
    bottleneck_params = {"density": args.density} if bottleneck == "sparling" else {}
    model = build_model(train, args.preset, bottleneck, bottleneck_params, **overrides)
    channels = model.g.conv_out.out_channels
    ideal = args.setting == "h-ideal"
    channel_of = symbol_channels(train, channels) if ideal else None
    test_size = getattr(args, "test_size", 0)
    if test_size < 0:
        raise InputError(
            f"--test-size must be 0 (none) or a number of test samples, got {test_size}"
        )
    test = make_domain(args.domain, "test", params, audio_root) if test_size else None
    return Setup(train, val, model, spatial_shape(train), decode_length(train), channel_of, test)


def run(
    args: argparse.Namespace,
    overrides: dict[str, Any],
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    setup: Setup | None = None,
) -> dict[str, Any]:
    import numpy as np
    import torch

    from sparling.models import sequence_loss
    from sparling.scoring import collate_inputs

    setup = setup or prepare(args, overrides)
    model, train_domain, shape = setup.model, setup.train, setup.shape
    val = [setup.val.sample(args.data_seed, i) for i in range(args.val_size)]
    test_size = getattr(args, "test_size", 0)
    test = [setup.test.sample(args.data_seed, i) for i in range(test_size)] if test_size else []
    channels = model.g.conv_out.out_channels
    ideal = setup.channel_of is not None
    clutter = (args.ideal_inside, args.ideal_outside)

    def maps_for(batch: list[Any]) -> Any:
        assert setup.channel_of is not None
        if clutter == (0, 0):
            return ideal_maps(batch, setup.channel_of, channels, shape)
        return noisy_maps(batch, setup.channel_of, channels, shape, *clutter)

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

    # the training samples g's batch norms are re-estimated over before each evaluation
    recalibration = [train_domain.sample(args.data_seed, i) for i in range(args.recalibrate_bn)]

    @torch.no_grad()
    def evaluate(samples: list[Any]) -> tuple[float, float]:
        model.eval()
        correct, loss_sum, count = 0, 0.0, 0
        for start in range(0, len(samples), 100):
            batch = samples[start : start + 100]
            logits, ids = forward(batch)
            loss_sum += float(sequence_loss(logits, ids[:, 1:])) * len(batch)
            if ideal:
                memory, bias = model.h.encode_with_bias(maps_for(batch))
                out = model.h.greedy_decode(memory, setup.max_len, bias)
                pred = model.tokenizer.decode_batch(out)
            else:
                pred = model.decode(collate_inputs(batch), setup.max_len)
            correct += sum(p == s.tokens for p, s in zip(pred, batch))
            count += len(batch)
        model.train()
        return correct / count, loss_sum / count

    label = args.label or args.setting
    summary = _summary(args, overrides, setup)
    curve: list[dict[str, Any]] = []
    start_time = time.monotonic()
    train_seconds = 0.0
    train_cpu = 0.0  # this process's CPU time in the steps: on a shared machine, wall time
    pos = 0  # also measures the neighbours (cpu_share = CPU time / wall time / threads)
    running = math.nan
    model.train()
    while pos < args.samples:
        step_start, step_cpu = time.monotonic(), time.process_time()
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
        train_cpu += time.process_time() - step_cpu
        if pos % args.eval_every < args.batch or pos >= args.samples:
            if recalibration and not ideal:
                with torch.no_grad():
                    model.recalibrate_batch_norm(
                        collate_inputs(recalibration[i : i + args.batch])
                        for i in range(0, len(recalibration), args.batch)
                    )
            acc, val_loss = evaluate(val)
            held_out = {}
            if test:
                test_acc, test_loss = evaluate(test)
                held_out = {"test_exact_match": test_acc, "test_loss": round(test_loss, 5)}
            curve.append(
                {
                    "samples": pos,
                    "exact_match": acc,
                    "val_loss": round(val_loss, 5),
                    **held_out,
                    "train_loss": round(running, 5),
                    "train_seconds": round(train_seconds, 1),
                    "train_cpu_seconds": round(train_cpu, 1),
                    "wall_seconds": round(time.monotonic() - start_time, 1),
                }
            )
            print(
                f"[{args.domain} {label}] samples={pos} exact_match={acc:.3f} "
                f"val_loss={val_loss:.4f} train_loss={running:.4f} "
                + (f"test_exact_match={held_out['test_exact_match']:.3f} " if held_out else "")
                + f"{pos / train_seconds:.1f} samples/s "
                f"(cpu share {share(train_cpu, train_seconds, args.threads)}) "
                f"t={time.monotonic() - start_time:.0f}s",
                flush=True,
            )
            if on_eval is not None:
                on_eval(summary(curve, pos, train_seconds, train_cpu))
            if args.stop_at and acc >= args.stop_at:
                break
    return summary(curve, pos, train_seconds, train_cpu)


def _summary(args: argparse.Namespace, overrides: dict[str, Any], setup: Setup) -> Any:
    from sparling.models.presets import preset_config

    channels = setup.model.g.conv_out.out_channels
    # the preset as resolved when measured (presets change; records must not)
    architecture = preset_config(
        args.domain,
        args.preset,
        channels=channels,
        **{k: v for k, v in overrides.items() if k != "channels"},
    ).model_dump(mode="json")
    domain_spec = setup.train.spec()

    def summary(
        curve: list[dict[str, Any]], pos: int, train_seconds: float, train_cpu: float
    ) -> dict[str, Any]:
        return {
            "label": args.label or args.setting,
            "setting": args.setting,
            "domain": args.domain,
            "domain_spec": domain_spec,
            "preset": args.preset,
            "overrides": overrides,
            "architecture": architecture,
            "symbol_channels": setup.channel_of,
            "max_output_len": setup.max_len,
            "density": args.density if args.setting == "sparling" else None,
            "batch_size": args.batch,
            "lr": args.lr,
            "warmup_samples": args.warmup,
            "train_size": args.train_size or "fresh",
            "seed": args.seed,
            "data_seed": args.data_seed,
            "val_size": args.val_size,
            "test_size": getattr(args, "test_size", 0),
            "recalibrate_bn": args.recalibrate_bn,
            "init": str(args.init) if args.init else None,
            "ideal_clutter": {"inside": args.ideal_inside, "outside": args.ideal_outside},
            "threads": args.threads,
            "samples_per_s": round(pos / max(train_seconds, 1e-9), 1),
            # the CPU share of the asked-for threads the steps got (near 1: a quiet machine)
            "cpu_share": share(train_cpu, train_seconds, args.threads),
            "samples_to": {f"{int(t * 100)}%": samples_to(curve, t) for t in THRESHOLDS},
            "curve": curve,
        }

    return summary


# -- figures ---------------------------------------------------------------------------------
def load_record(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(path.read_text())["results"][0]
    return result


def plot(paths: list[Path], out: Path) -> Path:
    """Draw the records (all of one domain) into ``out``: exact match and validation loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [load_record(p) for p in paths]
    names = sorted({record_domain(r) for r in records})
    if len(names) != 1:
        raise InputError(f"one figure per domain: the records are of {', '.join(names)}")
    fig, (ax, lx) = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = [plt.get_cmap("tab20")(k) for k in range(20)]
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
    title = TITLES.get(names[0], names[0])
    fig.suptitle(f"{title} learning curves (bench/learning_curve.py; density 0.5 unless named)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def figures(
    records: Sequence[Path], domain: str | None, out: Path | None
) -> list[tuple[list[Path], Path]]:
    """Which records go into which figure: named records grouped by their domain, else
    every record in each domain's folder (``domain``: only that one's)."""
    from sparling import domains

    if domain is not None:
        domains.get(domain)  # an unknown name: the error lists the registered ones
    groups: dict[str, list[Path]] = {}
    if records:
        for path in records:
            if not path.is_file():
                raise InputError(f"record {path} is not a file; accepted: learning-curve records")
            name = record_domain(load_record(path))
            if domain is None or name == domain:
                groups.setdefault(name, []).append(path)
        if not groups:
            raise InputError(f"none of the records given is of domain {domain}")
    else:
        for name in [domain] if domain else domains.names():
            found = sorted(records_dir(name).glob("*.json"))
            if found:
                groups[name] = found
        if not groups:
            where = records_dir(domain) if domain else f"{RECORDS} or its domain folders"
            raise InputError(f"no records given and none in {where}")
    if out is not None and len(groups) > 1:
        raise InputError(
            f"--out names one figure, but the records are of {len(groups)} domains "
            f"({', '.join(sorted(groups))}); accepted: --domain NAME with --out"
        )
    return [(paths, out or figure_path(name)) for name, paths in sorted(groups.items())]


# -- command line ----------------------------------------------------------------------------
def fail(command: str, message: str) -> NoReturn:
    """One line on stderr, exit status 2 (argparse's for a bad command line)."""
    text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    print(f"learning_curve.py {command}: error: {text}", file=sys.stderr)
    raise SystemExit(2)


def key_values(items: Sequence[str], option: str) -> dict[str, Any]:
    """``KEY=VALUE`` items, each value read as YAML (numbers, booleans, lists, text)."""
    from sparling.fileio import load_yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"{option} takes KEY=VALUE, got {item!r}")
        out[key] = load_yaml(value, source=f"{option} {key}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train one setting and record its learning curve")
    r.add_argument("setting", choices=SETTINGS)
    r.add_argument(
        "--domain",
        default=DEFAULT_DOMAIN,
        help="a registered domain: digit-circle, latex-ocr, audio-digits",
    )
    r.add_argument("--preset", default="fast", choices=("fast", "paper"))
    r.add_argument(
        "--density", type=float, default=0.5, help="sparling: the density held (AST starts at 0.5)"
    )
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument(
        "--domain-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter of the domain (e.g. max_length=10 for latex-ocr)",
    )
    r.add_argument(
        "--audio-root",
        default=None,
        metavar="DIR",
        help="audio: the recordings (default: $SPARLING_AUDIO_ROOT, else ../shared/data/fsdd)",
    )
    r.add_argument("--samples", type=int, default=50_000)
    r.add_argument("--eval-every", type=int, default=2_000)
    r.add_argument("--val-size", type=int, default=500)
    r.add_argument(
        "--test-size",
        type=int,
        default=0,
        metavar="N",
        help="also score N samples of the test split at each validation (audio: the held-out "
        "speakers); 0: none",
    )
    r.add_argument("--batch", type=int, default=16)
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--warmup", type=int, default=2_000)
    r.add_argument("--train-size", type=int, default=0, help="0: every sample fresh")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--data-seed", type=int, default=0)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument(
        "--recalibrate-bn",
        type=int,
        default=0,
        metavar="N",
        help="before each evaluation, re-estimate g's batch-norm statistics over the first N "
        "training samples (the run config's bn_recalibration_samples); 0: training's "
        "running averages",
    )
    r.add_argument("--stop-at", type=float, default=0.0, help="stop once exact match >= this")
    r.add_argument("--label", default="")
    r.add_argument(
        "--ideal-inside",
        type=int,
        default=0,
        metavar="K",
        help="h-ideal: K more activations at random in each motif's slices (half in other channels)",
    )
    r.add_argument(
        "--ideal-outside",
        type=int,
        default=0,
        metavar="K",
        help="h-ideal: K activations per input at random places and channels",
    )
    r.add_argument(
        "--init",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="start from the model weights of a checkpoint folder (e.g. RUN/checkpoints/last)",
    )
    p = sub.add_parser("plot", help="draw the recorded curves, one figure per domain")
    p.add_argument("records", nargs="*", type=Path)
    p.add_argument("--domain", default=None, help="only this domain's records")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the figure (default: docs/img/learning-curve.png for digit-circle, "
        "docs/img/learning-curve-DOMAIN.png for the others); records of one domain only",
    )
    args = parser.parse_args(argv)

    if args.command == "plot":
        try:
            for paths, out in figures(args.records, args.domain, args.out):
                print(plot(paths, out))
        except ValueError as e:  # a DomainError, an InputError
            fail("plot", str(e))
        return 0

    try:
        overrides = key_values(args.set, "--set")
        args.domain_params = key_values(args.domain_param, "--domain-param")
        setup = prepare(args, overrides)
    except ValueError as e:  # a DomainError, an InputError, a model config error
        fail("run", str(e))
    out = records_dir(args.domain) / f"{args.label or args.setting}.json"

    def write(result: dict[str, Any]) -> None:
        benchlib.write_report(out, argv=argv, load_before=None, results=[result], settings={})

    result = run(args, overrides, on_eval=write, setup=setup)
    write(result)
    print(f"samples to 50%/95%: {result['samples_to']} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
