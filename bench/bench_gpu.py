"""The ``paper`` preset on a GPU: peak, training step at batch 10 and the largest batch that
fits, with and without mixed precision, decoding, in one short run.

    python bench/bench_gpu.py [--seconds S] [--max-batch N] [--out FILE] [--markdown FILE]

For DigitCircle's ``paper`` preset (the published model, 46 M parameters) it measures:

* **peak**: the GPU's own matmul throughput, 8192^3 ``torch.mm`` in float32 (TF32 off),
  TF32 and bfloat16, best of several timed products after a warm-up.
* **training step**: ``Trainer._train_step`` exactly as a run calls it (collate, forward,
  loss, backward, clipping, AdamW step; inputs copied from the host each step), in fp32
  (TF32 off: the published arithmetic), TF32, and bf16 autocast (``compute.precision:
  bf16``), at batch 10 (the published batch) and at the largest power-of-two multiple of
  10 that fits (doubling until CUDA runs out of memory or ``--max-batch``). Plus the eager
  reference (``model.loss(x, ids).backward(); Adam.step()``, fp32) at batch 10.
  FLOPs per sample from ``torch.utils.flop_counter`` on one step (``bench_train_step``'s
  counter: cuDNN's LSTM is not counted by torch and is added analytically); fraction of
  peak = FLOPs x samples/s / the peak of the same arithmetic.
* **decoding**: cached greedy decoding against re-running the whole decoder per token,
  batch 64 (the validation batch), identical outputs checked.

Writes JSON (``--out``) and a Markdown section (``--markdown``) for docs/performance.md.
Each part is time-boxed and failures are recorded, not fatal, so one run returns
something whatever happens.
"""

from __future__ import annotations

import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import benchlib
from bench_train_step import count_step_flops, make_samples, run_config
from benchlib import RESULTS

DEVICE = "cuda"


def sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def time_cuda(fn: Any, *, seconds: float, min_reps: int = 3, warmup: int = 2) -> dict[str, Any]:
    """Wall time per call of ``fn`` with the device synchronised around each call."""
    for _ in range(warmup):
        fn()
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        if len(times) >= 1000:
            break
    return {"reps": len(times), **benchlib.summarize(times)}


def set_math(mode: str) -> None:
    import torch

    tf32 = mode == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def peaks(size: int) -> dict[str, float]:
    import torch

    out = {}
    for mode, dtype in (("fp32", torch.float32), ("tf32", torch.float32), ("bf16", torch.bfloat16)):
        set_math(mode)
        a = torch.randn(size, size, device=DEVICE, dtype=dtype)
        b = torch.randn(size, size, device=DEVICE, dtype=dtype)
        t = time_cuda(lambda a=a, b=b: torch.mm(a, b), seconds=1.0, min_reps=10, warmup=3)
        out[mode] = round(2 * size**3 / t["min_s"] / 1e12, 2)
        del a, b
    set_math("fp32")
    return out


def train_row(mode: str, batch: int, seconds: float, work: Path) -> dict[str, Any]:
    """``Trainer._train_step`` of the paper preset on the GPU; mode fp32 | tf32 | bf16."""
    import torch

    from sparling.train import make_trainer

    set_math("tf32" if mode == "tf32" else "fp32")
    cfg = run_config("digit-circle", "paper", "", batch).with_updates(
        {
            "compute.gpus_per_worker": 1 if DEVICE == "cuda" else 0,
            "compute.precision": "bf16" if mode == "bf16" else "fp32",
        }
    )
    _, samples = make_samples(cfg, 2 * batch)
    batches = [samples[:batch], samples[batch:]]
    trainer = make_trainer(cfg, samples, samples[:1], work / f"{mode}-{batch}", progress=False)
    state = {"i": 0}

    def step() -> None:
        trainer._train_step(batches[state["i"] % 2])
        state["i"] += 1

    if DEVICE == "cuda":
        torch.cuda.empty_cache()  # what the previous row left
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up (cuDNN autotuning, allocator)
    sync()
    flops = count_step_flops(trainer.model, step, batch)
    timing = time_cuda(step, seconds=seconds)
    row = {
        "variant": "project",
        "mode": mode,
        "batch": batch,
        "samples_per_s": round(batch / timing["median_s"], 2),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if DEVICE == "cuda"
        else None,
        "timing": timing,
        **flops,
    }
    return row


def reference_row(batch: int, seconds: float) -> dict[str, Any]:
    """The published setting written plainly: build_model, Adam 1e-5, model.loss, fp32."""
    import torch

    from sparling import domains
    from sparling.models import build_model
    from sparling.scoring import collate_inputs
    from sparling.seeding import set_seed

    set_math("fp32")
    cfg = run_config("digit-circle", "paper", "", batch)
    dom = domains.make("digit-circle", split="train")
    set_seed(0)
    model = build_model(dom, "paper", cfg.bottleneck.name, cfg.bottleneck.params).to(DEVICE)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    samples = [dom.sample(0, i) for i in range(batch)]
    x = collate_inputs(samples)
    tokens = [s.tokens for s in samples]

    def step() -> None:
        opt.zero_grad()
        model.loss(x, tokens).backward()
        opt.step()

    step()
    sync()
    flops = count_step_flops(model, step, batch)
    timing = time_cuda(step, seconds=seconds)
    return {
        "variant": "eager-reference",
        "mode": "fp32",
        "batch": batch,
        "samples_per_s": round(batch / timing["median_s"], 2),
        "timing": timing,
        **flops,
    }


def decode_rows(seconds: float, batch: int = 64) -> list[dict[str, Any]]:
    import torch

    from sparling import domains
    from sparling.config import load_config
    from sparling.models import EOS_ID, build_model
    from sparling.scoring import collate_inputs
    from sparling.seeding import set_seed

    set_math("fp32")
    cfg = load_config(benchlib.REPO / "pipelines" / "configs" / "digit-circle-paper.yaml")
    dom = domains.make("digit-circle", split="test")
    set_seed(0)
    model = build_model(dom, "paper", cfg.bottleneck.name, cfg.bottleneck.params).to(DEVICE).eval()
    with torch.no_grad():
        model.h.out.bias[EOS_ID] = -1e9  # every row decodes max_len tokens
        x = collate_inputs([dom.sample(0, i) for i in range(batch)])
        memory, bias = model.h.encode_with_bias(model.motifs(x))
    out: dict[str, Any] = {}
    rows = []
    for name, fn in (("cached", model.h.greedy_decode), ("naive", model.h.greedy_decode_naive)):

        @torch.no_grad()
        def run(fn: Any = fn, name: str = name) -> None:
            out[name] = fn(memory, cfg.max_output_len, bias)

        t = time_cuda(run, seconds=seconds)
        rows.append(
            {"decoder": name, "batch": batch, "samples_per_s": round(batch / t["median_s"], 1), **t}
        )
    same = bool(torch.equal(out["cached"], out["naive"]))
    for r in rows:
        r["identical"] = same
        r["speedup"] = round(rows[1]["median_s"] / rows[0]["median_s"], 2)
    return rows


def markdown(report: dict[str, Any]) -> str:
    gpu = report.get("gpu", {})
    lines = [
        f"GPU: {gpu.get('name')} ({gpu.get('memory_gb')} GiB), torch {gpu.get('torch')}; "
        f"`{report['command']}`, {report['created']}.",
        "",
        "Peak (8192^3 matmul, TFLOP/s): "
        + ", ".join(f"{k} {v}" for k, v in report.get("peak_tflops", {}).items()),
        "",
        "| variant | arithmetic | batch | samples/s | GFLOP/sample | TFLOP/s | % of peak | memory GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if "error" in r:
            lines.append(
                f"| {r.get('variant')} | {r.get('mode')} | {r.get('batch')} | "
                f"failed: {r['error'][:80]} | | | | |"
            )
            continue
        gf = r["flops_per_sample"] / 1e9
        tf = gf * r["samples_per_s"] / 1e3
        peak = report["peak_tflops"].get(r["mode"])
        pct = f"{100 * tf / peak:.1f}" if peak else "-"
        lines.append(
            f"| {r['variant']} | {r['mode']} | {r['batch']} | {r['samples_per_s']:.1f} | "
            f"{gf:.2f} | {tf:.2f} | {pct} | {r.get('peak_memory_gb', '-')} |"
        )
    dec = report.get("decode", [])
    if dec:
        lines += [
            "",
            f"Decoding (paper preset, batch {dec[0]['batch']}, 32 tokens): "
            + ", ".join(f"{r['decoder']} {r['samples_per_s']} samples/s" for r in dec)
            + f"; speed-up {dec[0]['speedup']}x, identical outputs: {dec[0]['identical']}.",
        ]
    if report.get("max_batch_note"):
        lines += ["", report["max_batch_note"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = benchlib.make_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="timing per row (s)")
    parser.add_argument("--max-batch", type=int, default=1280)
    parser.add_argument("--peak-size", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=10, help="the published batch")
    parser.add_argument("--decode-batch", type=int, default=64)
    parser.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a smoke test only"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu.json")
    parser.add_argument("--markdown", type=Path, default=RESULTS / "gpu.md")
    args = parser.parse_args(argv)

    import torch

    global DEVICE
    DEVICE = args.device
    extra: dict[str, Any] = {"gpu": {"name": "cpu (smoke test)", "torch": torch.__version__}}
    if DEVICE == "cuda":
        if not torch.cuda.is_available():
            print("no CUDA GPU visible: nothing to measure", file=sys.stderr)
            return 2
        props = torch.cuda.get_device_properties(0)
        extra["gpu"] = {
            "name": props.name,
            "memory_gb": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
        }
    results: list[dict[str, Any]] = []

    def save() -> None:
        report = benchlib.write_report(
            args.out,
            argv=argv,
            load_before=None,
            results=results,
            settings=vars(args),
            **extra,
        )
        args.markdown.write_text(markdown(report))

    def attempt(label: str, fn: Any) -> Any:
        t0 = time.monotonic()
        try:
            value = fn()
            print(f"{label}: done in {time.monotonic() - t0:.1f} s", flush=True)
            return value
        except Exception as e:  # recorded, the other parts still run
            print(f"{label}: FAILED {e!r}", flush=True)
            traceback.print_exc()
            return {"error": repr(e)}

    extra["peak_tflops"] = attempt("peak", lambda: peaks(args.peak_size))
    save()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        b0 = args.batch
        results.append(attempt(f"eager reference b{b0}", lambda: reference_row(b0, args.seconds)))
        save()
        for mode in ("fp32", "tf32", "bf16"):
            row = attempt(
                f"{mode} b{b0}", lambda mode=mode: train_row(mode, b0, args.seconds, work)
            )
            results.append({"variant": "project", "mode": mode, "batch": b0, **row})
            save()
        # the largest batch that fits, doubling from the published one (bf16 and tf32)
        for mode in ("bf16", "tf32"):
            batch, best = 2 * b0, None
            while batch <= args.max_batch:
                row = attempt(
                    f"{mode} b{batch}",
                    lambda mode=mode, batch=batch: train_row(mode, batch, args.seconds, work),
                )
                if "error" in row:
                    oom = "out of memory" in row["error"].lower()
                    extra.setdefault("max_batch_note", "")
                    extra["max_batch_note"] += (
                        f"{mode}: batch {batch} {'does not fit (CUDA out of memory)' if oom else 'failed'}. "
                    )
                    if DEVICE == "cuda":
                        torch.cuda.empty_cache()
                    break
                best = row
                results.append({**row, "variant": "project-batch-scan"})
                save()
                batch *= 2
            if best is not None:
                results.append({**best, "variant": "project-largest-batch"})
            save()
    extra["decode"] = attempt("decode", lambda: decode_rows(args.seconds, args.decode_batch))
    save()
    print(args.markdown.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
