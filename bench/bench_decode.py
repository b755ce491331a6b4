"""Greedy decoding throughput: the KV-cached decoder against a full re-run per token.

    .venv/bin/python bench/bench_decode.py [--domains NAME ...] [--presets paper fast]
        [--batch N] [--threads 1] [--seconds S] [--max-len N] [--out FILE]

For each (domain, preset) it builds the model (``build_model``, randomly initialised,
eval mode), encodes one batch of real inputs once, then times, on the same memory:

* ``cached``: ``h.greedy_decode`` (cross-attention keys/values projected once, one new
  position per step with cached self-attention keys/values);
* ``naive``: ``h.greedy_decode_naive`` (the whole decoder re-run on the prefix for
  every new token).

An untrained model may emit EOS at once, which would end decoding after one step; so
EOS is made impossible (its output bias set to -1e9) and every row decodes exactly
``max_len`` tokens: the longest output the run config allows (``max_output_len`` of the
paper config: 10 for DigitCircle, 40 for LaTeX) unless ``--max-len`` says otherwise.
Both decoders must return identical ids (checked, reported as ``identical``).

Samples/s are reported for the decoder alone and for encode + decode (the encoder is
timed separately, ``--encode-reps`` times). Speed-up = naive time / cached time; the
project's goal is >= 5x. Results go to ``bench/results/decode.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import benchlib
from benchlib import REPO, RESULTS

DOMAINS = ("digit-circle", "latex-ocr")
PRESETS = ("paper", "fast")
GOAL_SPEEDUP = 5.0


def build(domain: str, preset: str, batch: int) -> tuple[Any, Any, int]:
    """Model (eval, EOS suppressed), a batch of inputs, and the config's max output length."""
    import torch

    from sparling import domains
    from sparling.config import load_config
    from sparling.models import EOS_ID, build_model
    from sparling.scoring import collate_inputs
    from sparling.seeding import set_seed

    cfg = load_config(REPO / "pipelines" / "configs" / f"{domain}-paper.yaml")
    dom = domains.make(domain, split="test", **cfg.domain.params)
    set_seed(0)
    model = build_model(dom, preset, cfg.bottleneck.name, cfg.bottleneck.params)
    model.eval()
    with torch.no_grad():
        model.h.out.bias[EOS_ID] = -1e9  # every row decodes max_len tokens
    x = collate_inputs([dom.sample(0, i) for i in range(batch)])
    return model, x, cfg.max_output_len


def measure(
    domain: str, preset: str, threads: int, batch: int, max_len: int | None, args: Any
) -> list[dict[str, Any]]:
    import torch

    model, x, config_len = build(domain, preset, batch)
    length = max_len or config_len
    benchlib.set_threads(threads)
    memory: dict[str, torch.Tensor | None] = {}

    @torch.no_grad()
    def encode() -> None:
        memory["m"], memory["bias"] = model.h.encode_with_bias(model.motifs(x))

    enc = benchlib.time_reps(
        encode, seconds=0.0, min_reps=args.encode_reps, max_reps=args.encode_reps, threads=threads
    )
    mem, bias = memory["m"], memory["bias"]
    assert mem is not None
    out: dict[str, torch.Tensor] = {}
    rows = []
    for name, fn in (("cached", model.h.greedy_decode), ("naive", model.h.greedy_decode_naive)):

        def run(fn: Any = fn, name: str = name) -> None:
            out[name] = fn(mem, length, bias)

        t = benchlib.time_reps(
            run,
            seconds=args.seconds,
            min_reps=args.min_reps,
            max_reps=500,
            warmup=1,
            threads=threads,
        )
        decode_s = t["median_s"]
        rows.append(
            {
                "domain": domain,
                "preset": preset,
                "decoder": name,
                "threads": threads,
                "batch": batch,
                "max_len": length,
                "tokens_decoded": int(out[name].shape[1]),
                "memory_shape": list(mem.shape),
                "samples_per_s": round(batch / decode_s, 3),
                "samples_per_s_with_encode": round(batch / (decode_s + enc["median_s"]), 3),
                "encode": enc,
                "timing": t,
                "load_average": benchlib.loadavg(),
            }
        )
    same = torch.equal(out["cached"], out["naive"])
    differing = int((out["cached"] != out["naive"]).any(dim=1).sum())
    cached, naive = rows
    speedup = naive["timing"]["median_s"] / cached["timing"]["median_s"]
    e2e = (naive["timing"]["median_s"] + enc["median_s"]) / (
        cached["timing"]["median_s"] + enc["median_s"]
    )
    for r in rows:
        r.update(
            identical=same,
            rows_differing=differing,
            speedup=round(speedup, 3),
            speedup_with_encode=round(e2e, 3),
            meets_goal=speedup >= GOAL_SPEEDUP,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = benchlib.make_parser(__doc__)
    parser.add_argument("--domains", nargs="+", choices=DOMAINS, default=list(DOMAINS))
    parser.add_argument("--presets", nargs="+", choices=PRESETS, default=list(PRESETS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1])
    parser.add_argument("--batch", type=int, default=32, help="inputs decoded at once")
    parser.add_argument(
        "--max-len", type=int, help="tokens per row (None: the paper config's max_output_len)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="timing per decoder (s)")
    parser.add_argument("--min-reps", type=int, default=3, help="timed decodes, at least")
    parser.add_argument("--encode-reps", type=int, default=1, help="timed encodes per row")
    parser.add_argument("--out", type=Path, default=RESULTS / "decode.json")
    args = parser.parse_args(argv)

    load_before = benchlib.loadavg()
    import torch

    torch.set_num_interop_threads(1)
    rows: list[dict[str, Any]] = []
    for threads in args.threads:
        for domain in args.domains:
            for preset in args.presets:
                print(f"... {domain} {preset} threads={threads}", flush=True)
                try:
                    rows += measure(domain, preset, threads, args.batch, args.max_len, args)
                except Exception as e:  # reported, not fatal
                    rows.append(
                        {
                            "domain": domain,
                            "preset": preset,
                            "threads": threads,
                            "status": "failed",
                            "error": f"{type(e).__name__}: {e}"[:500],
                        }
                    )
    report = benchlib.write_report(
        args.out, argv=argv, load_before=load_before, settings=vars(args), results=rows
    )
    show = [
        {**r, "reps": r["timing"]["reps"], "cpu_share": r["timing"]["cpu_share"]}
        for r in rows
        if "timing" in r
    ]
    benchlib.print_table(
        show,
        [
            ("domain", "domain", ""),
            ("preset", "preset", ""),
            ("decoder", "decoder", ""),
            ("threads", "thr", "d"),
            ("batch", "batch", "d"),
            ("tokens_decoded", "tokens", "d"),
            ("samples_per_s", "samples/s", ".1f"),
            ("samples_per_s_with_encode", "+encode", ".2f"),
            ("speedup", "speed-up", ".2f"),
            ("speedup_with_encode", "+encode", ".2f"),
            ("identical", "identical", ""),
            ("reps", "reps", "d"),
            ("cpu_share", "cpu share", ".2f"),
        ],
    )
    for r in rows:
        if "error" in r:
            print(f"{r['domain']} {r['preset']} threads={r['threads']}: {r['error']}")
    print(f"goal: cached >= {GOAL_SPEEDUP:.0f}x naive (decoder alone)")
    benchlib.print_footer(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
