"""A time-boxed training probe: how far one run config gets in a given wall time.

    .venv/bin/python bench/probe_train.py [--config FILE] [--set key=value ...]
        [--seconds S] [--device cpu|cuda] [--threads N] [--eval-samples N] [--out FILE]

Used to choose the ``fast`` preset's training settings (``docs/results.md``) before committing hours
of CPU to a run: it trains the library's own :class:`sparling.train.Trainer` on samples
generated on the fly (the same pure function of (seed, index) the sharded generator
writes, so no dataset has to exist first), stops when the time is up or the run ends, and
then scores the model as it stands on the test split (FPE/FNE/CE/E2EE/accuracy/density,
like ``sparling evaluate``). Every validation record (samples, density, accuracy, and the
motif errors at each density step) is printed as it happens and written to ``--out``.

Not a run of the pipeline (no Ray, no MLflow, no checkpoints kept): a measurement.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib
from benchlib import REPO, RESULTS


class _TimeUp(Exception):
    pass


def probe(
    cfg: Any, *, seconds: float, device: str, eval_samples: int, log: Any = print
) -> dict[str, Any]:

    from sparling import domains
    from sparling.evaluate import evaluate_model
    from sparling.scoring import GeneratedSamples as Generated
    from sparling.train import Callbacks, make_trainer

    def split(name: str, size: int) -> Generated:
        d = domains.make(cfg.domain.name, split=name, **cfg.domain.params)
        return Generated(d, cfg.data.seed, size)

    train = split("train", cfg.data.train_size)
    val = split("val", cfg.data.val_size)
    test = split("test", min(eval_samples, cfg.data.test_size))
    start = time.monotonic()
    records: list[dict[str, Any]] = []

    def on_validation(record: dict[str, Any], _ckpt: Any) -> None:
        r = {k: v for k, v in record.items() if isinstance(v, (int, float, str))}
        r["elapsed_s"] = round(time.monotonic() - start, 1)
        records.append(r)
        keys = ("samples", "density", "train_loss", "val_accuracy", "val_e2ee", "val_ce")
        log(" ".join(f"{k}={r[k]:.4g}" for k in keys if k in r) + f" t={r['elapsed_s']}s")

    def on_progress(info: dict[str, Any]) -> None:
        if time.monotonic() - start > seconds:
            raise _TimeUp

    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(
            cfg,
            train,
            val,
            Path(tmp),
            callbacks=Callbacks(on_validation=on_validation, on_progress=on_progress),
            progress=False,
            device=device,
        )
        status = "time-up"
        try:
            status = trainer.fit().status
        except _TimeUp:
            pass
        train_seconds = time.monotonic() - start
        with trainer.autocast():
            domain = domains.make(cfg.domain.name, split="test", **cfg.domain.params)
            ev = evaluate_model(
                trainer.model, domain, test, max_len=cfg.max_output_len, samples=len(test)
            )
    return {
        "config": cfg.model_dump(mode="json"),
        "run_id": cfg.run_id(),
        "device": str(trainer.device),
        "status": status,
        "samples": trainer.samples,
        "samples_per_s": round(trainer.samples / max(train_seconds, 1e-9), 2),
        "train_seconds": round(train_seconds, 1),
        "density": trainer.schedule.density,
        "density_steps": len(trainer.density_checkpoints),
        "final_eval": ev.metrics,
        "validations": records,
    }


def main(argv: list[str] | None = None) -> int:
    parser = benchlib.make_parser(__doc__)
    parser.add_argument(
        "--config", type=Path, default=REPO / "pipelines" / "configs" / "digit-circle-fast.yaml"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seconds", type=float, default=600.0, help="training wall time")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-samples", type=int, default=500)
    parser.add_argument("--out", type=Path, default=RESULTS / "probe_train.json")
    args = parser.parse_args(argv)

    from sparling.config import load_config
    from sparling.fileio import load_yaml

    updates = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set takes KEY=VALUE, got {item!r}")
        updates[key] = load_yaml(value, source=f"--set {key}")
    if args.device.startswith("cuda"):
        updates.setdefault("compute.gpus_per_worker", 1)
    cfg = load_config(args.config).with_updates(updates)
    benchlib.set_threads(args.threads)
    label = " ".join(args.set) or "base"

    def log(line: str) -> None:
        print(f"[{label}] {line}", flush=True)

    load_before = benchlib.loadavg()
    result = probe(
        cfg, seconds=args.seconds, device=args.device, eval_samples=args.eval_samples, log=log
    )
    result["label"] = label
    result["threads"] = args.threads
    log(
        f"final: {json.dumps(result['final_eval'])} samples={result['samples']} "
        f"density={result['density']:.3e}"
    )
    benchlib.write_report(
        args.out,
        argv=argv,
        load_before=load_before,
        results=[result],
        settings={"seconds": args.seconds, "device": args.device, "set": args.set},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
