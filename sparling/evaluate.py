"""Evaluating a trained run: motif errors, end-to-end error, density, and figures.

``evaluate_checkpoint`` rebuilds the model a checkpoint describes (its resolved config
sits beside it), runs ``g`` and the bottleneck on test inputs, and scores the surviving
activations against the true motifs (docs/method.md section 6): FPE, FNE, CE (Hungarian for
DigitCircle, majority for the others), E2EE of greedy decoding, and the measured density.

Motif errors read the non-negative part of the activations: for Sparling and the sparse
baselines that is all of it; for ``non-sparse``/``noise`` (whose outputs can be negative)
only the positive values count as "firing".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import domains
from .checkpoint import CONFIG_FILE, load_checkpoint
from .config import RunConfig, load_config
from .domains import Domain, Sample
from .metrics import MotifErrors, combine_motif_errors, end_to_end_error
from .models import SparlingModel
from .runs import build_run_model, load_weights
from .runs import select_checkpoint as select_checkpoint  # how `sparling evaluate RUN` chooses
from .scoring import SampleSource, batch_motif_errors, collate_inputs


@dataclass
class Evaluation:
    metrics: dict[str, float]
    errors: MotifErrors
    checkpoint: Path
    example: tuple[Sample, np.ndarray] | None = None
    """One test input with its activation map (C, ...), for figures."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.checkpoint),
            **self.metrics,
            "confusion": self.errors.confusion.tolist(),
            "symbols": list(self.errors.symbols),
            "channel_to_symbol": {str(k): v for k, v in self.errors.channel_to_symbol.items()},
        }


# -- loading a checkpoint's model ---------------------------------------------------------
def load_model(
    checkpoint: Path, device: torch.device | str = "cpu"
) -> tuple[SparlingModel, RunConfig, dict[str, Any]]:
    """The model of a checkpoint, in eval mode, at the density it was saved at, on ``device``."""
    config = load_config(Path(checkpoint) / CONFIG_FILE)
    state, meta = load_checkpoint(checkpoint)
    domain = domains.make(config.domain.name, **config.domain.params)
    # The weights come from the checkpoint itself: no need to fetch init_from again.
    model = build_run_model(
        config.model_copy(update={"init_from": None}), domain, architecture=meta.get("architecture")
    )
    load_weights(model, state["model"], checkpoint)
    model.to(device)
    bottleneck: Any = model.bottleneck
    if getattr(bottleneck, "adaptive", False):
        bottleneck.set_density(float(meta["density"]))
    model.eval()
    return model, config, meta


# -- scoring ---------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_model(
    model: SparlingModel,
    domain: Domain,
    data: SampleSource,
    *,
    samples: int | None = None,
    batch_size: int = 64,
    max_len: int = 32,
    checkpoint: Path | None = None,
) -> Evaluation:
    """Score ``model`` on the first ``samples`` items of ``data`` (all by default)."""
    n = len(data) if samples is None else min(samples, len(data))
    if n < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    model.eval()
    parts: list[MotifErrors] = []
    predicted: list[list[str]] = []
    truth: list[list[str]] = []
    nonzero = total = 0
    example = None
    for start in range(0, n, batch_size):
        batch: Sequence[Sample] = [data[i] for i in range(start, min(start + batch_size, n))]
        errors, acts = batch_motif_errors(model, domain, batch)
        nonzero += int(torch.count_nonzero(acts))
        total += acts.numel()
        parts.append(errors)
        x = collate_inputs(batch)
        predicted += model.decode(x, max_len)
        truth += [list(s.tokens) for s in batch]
        if example is None:
            example = (batch[0], acts[0].numpy())
    errors = combine_motif_errors(parts)
    metrics = {
        "fpe": errors.fpe,
        "fne": errors.fne,
        "ce": errors.ce,
        "e2ee": end_to_end_error(predicted, truth),
        "accuracy": float(np.mean([p == t for p, t in zip(predicted, truth)])),
        "density": nonzero / total,
        "samples": float(n),
    }
    return Evaluation(metrics, errors, checkpoint or Path("."), example)


def evaluate_checkpoint(
    checkpoint: Path,
    test: SampleSource,
    *,
    samples: int | None = None,
    out_dir: Path | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> Evaluation:
    """Evaluate one checkpoint on ``test`` (the model on ``device``); with ``out_dir``, also
    write the report files."""
    model, config, meta = load_model(checkpoint, device)
    domain = domains.make(config.domain.name, split="test", **config.domain.params)
    result = evaluate_model(
        model,
        domain,
        test,
        samples=samples,
        batch_size=batch_size,
        max_len=config.max_output_len,
        checkpoint=Path(checkpoint),
    )
    result.metrics["checkpoint_density"] = float(meta["density"])
    result.metrics["checkpoint_samples"] = float(meta["samples"])
    if out_dir is not None:
        write_report(result, domain, Path(out_dir))
    return result


# -- figures ---------------------------------------------------------------------------------
def write_report(result: Evaluation, domain: Domain, out_dir: Path) -> list[Path]:
    """``evaluation.json``, ``confusion.png`` and ``activations.png`` in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "evaluation.json"]
    paths[0].write_text(json.dumps(result.to_dict(), indent=2))
    paths.append(plot_confusion(result.errors, out_dir / "confusion.png"))
    if result.example is not None:
        sample, acts = result.example
        paths.append(
            plot_activations(sample, acts, result.errors, domain, out_dir / "activations.png")
        )
    return paths


def plot_confusion(errors: MotifErrors, path: Path) -> Path:
    import matplotlib.pyplot as plt

    conf = errors.confusion
    fig, ax = plt.subplots(figsize=(1 + 0.45 * conf.shape[1], 1 + 0.4 * conf.shape[0]))
    ax.imshow(conf, cmap="Blues", aspect="auto")
    ax.set_xticks(range(len(errors.symbols)), errors.symbols, rotation=90)
    ylabels = [
        f"{c} → {errors.channel_to_symbol[c]}" if c in errors.channel_to_symbol else f"{c}"
        for c in range(conf.shape[0])
    ]
    ax.set_yticks(range(conf.shape[0]), ylabels)
    ax.set_xlabel("true motif")
    ax.set_ylabel("channel → assigned symbol")
    for (i, j), v in np.ndenumerate(conf):
        if v:
            ax.text(
                j,
                i,
                str(v),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if v > conf.max() / 2 else "black",
            )
    ax.set_title(
        f"matched motifs per channel (CE {errors.ce:.1%}, FNE {errors.fne:.1%}, "
        f"FPE {errors.fpe:.1%})",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_activations(
    sample: Sample, acts: np.ndarray, errors: MotifErrors, domain: Domain, path: Path
) -> Path:
    """The input with each channel's surviving activations drawn over it, colour per channel,
    labelled with the symbol the channel was assigned; true motif boxes in grey."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    colours = plt.get_cmap("tab10" if acts.shape[0] <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(7, 7 * (0.35 if domain.kind == "audio" else 1)))
    if domain.kind == "image":
        ax.imshow(sample.x, cmap="gray_r", alpha=0.35, interpolation="nearest")
        for symbol, (rs, cs) in sample.motifs:
            ax.add_patch(
                Rectangle(
                    (cs.start - 0.5, rs.start - 0.5),
                    cs.stop - cs.start,
                    rs.stop - rs.start,
                    fill=False,
                    ec="0.4",
                    lw=0.8,
                )
            )
            ax.text(cs.start, rs.start - 1, symbol, color="0.3", fontsize=8)
        for c in range(acts.shape[0]):
            ys, xs = np.nonzero(acts[c])
            if len(ys):
                label = f"ch {c} → {errors.channel_to_symbol.get(c, '?')}"
                ax.scatter(
                    xs,
                    ys,
                    s=30 + 150 * acts[c][ys, xs] / acts.max(),
                    color=colours(c % 20),
                    label=label,
                    edgecolors="k",
                    linewidths=0.4,
                )
    else:
        ax.imshow(np.asarray(sample.x).T, origin="lower", aspect="auto", cmap="gray_r", alpha=0.5)
        for symbol, (fs,) in sample.motifs:
            ax.axvspan(fs.start, fs.stop, color="0.8", alpha=0.4)
            ax.text(fs.start, np.asarray(sample.x).shape[1] + 1, symbol, color="0.3", fontsize=8)
        for c in range(acts.shape[0]):
            (ts,) = np.nonzero(acts[c])
            if len(ts):
                label = f"ch {c} → {errors.channel_to_symbol.get(c, '?')}"
                ax.scatter(
                    ts,
                    np.full(len(ts), 4 + 5 * (c % 10)),
                    color=colours(c % 20),
                    label=label,
                    marker="v",
                    s=40,
                    edgecolors="k",
                    linewidths=0.4,
                )
    ax.set_title(
        f"surviving activations per channel; true output {' '.join(sample.tokens)}", fontsize=9
    )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
