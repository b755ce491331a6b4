"""Spoken digits: a model's errors on the training speakers against the held-out ones.

    .venv/bin/python bench/audio_speakers.py CHECKPOINT_OR_RUN [--samples N]
        [--data-seed S] [--audio-root DIR] [--out FILE.json]

The audio domain's ``val`` split draws clips of the training speakers (the recordings
training draws from, in new sequences); its ``test`` split draws only the held-out
speakers (FSDD: ``theo``; AudioMNIST: the authors' 9). This scores one checkpoint on
``--samples`` sequences of each (default 500, generated now from ``--data-seed``, default
the run's data seed, with a stream of its own: ``seed + 1``, so that none is a sequence
the run validated on) with the project's metrics: exact match, FPE, FNE, CE (majority
assignment) and E2EE, and the density measured. A model that has learnt the digits scores
alike on both; one that has learnt the training recordings scores far better on ``val``.
The record is printed and, with ``--out``, written as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import benchlib  # noqa: F401  (puts the repository on sys.path)


def score(checkpoint: Path, samples: int, data_seed: int | None) -> dict[str, Any]:
    import torch

    from sparling import domains
    from sparling.evaluate import evaluate_model, load_model
    from sparling.scoring import GeneratedSamples

    torch.set_num_threads(1)
    model, config, meta = load_model(checkpoint, "cpu")
    if config.domain.name != "audio-digits":
        raise SystemExit(f"{checkpoint}: a model of {config.domain.name!r}, not audio-digits")
    seed = (config.data.seed if data_seed is None else data_seed) + 1
    test_domain = domains.make("audio-digits", split="test", **config.domain.params)
    record: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "run": config.run_id(),
        "checkpoint_samples": int(meta["samples"]),
        "checkpoint_density": float(meta["density"]),
        "data_seed": seed,
        "samples": samples,
        "splits": {},
    }
    for split, who in (("val", "training speakers"), ("test", "held-out speakers")):
        domain = domains.make("audio-digits", split=split, **config.domain.params)
        started = time.perf_counter()
        result = evaluate_model(
            model,
            test_domain,  # the metrics' motif definitions (the same for every split)
            GeneratedSamples(domain, seed, samples),
            samples=samples,
            max_len=config.max_output_len,
            checkpoint=checkpoint,
        )
        m = result.metrics
        record["splits"][split] = {
            "speakers": who,
            "speaker_names": sorted({r.speaker for r in domain.recordings}),
            **{k: float(v) for k, v in m.items() if isinstance(v, (int, float))},
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(
            f"{split} ({who}): exact {m['accuracy']:.1%}  FPE {m['fpe']:.1%}  FNE {m['fne']:.1%}"
            f"  CE {m['ce']:.1%}  E2EE {m['e2ee']:.1%}  density {m['density']:.2e}",
            flush=True,
        )
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a run folder, a checkpoint folder or an exported model")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--data-seed", type=int)
    parser.add_argument("--audio-root", help="the recordings (default: $SPARLING_AUDIO_ROOT)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error(f"--samples must be at least 1, got {args.samples}")
    if args.audio_root:
        os.environ["SPARLING_AUDIO_ROOT"] = args.audio_root
    from sparling.runs import RunFolder

    path = Path(args.path)
    if path.suffix != ".safetensors" and (path / "checkpoints").is_dir():
        path = RunFolder(path).select_checkpoint()
    record = score(path, args.samples, args.data_seed)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
