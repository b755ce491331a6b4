"""Training-step throughput per domain and preset, its FLOPs, and the fraction of the
machine's own float32 peak it reaches.

    .venv/bin/python bench/bench_train_step.py [--domains NAME ...] [--presets paper fast]
        [--threads 1 2] [--seconds S] [--min-steps N] [--audio-root DIR] [--out FILE]

For every (threads, domain, preset) it builds the run's :class:`sparling.train.Trainer`
exactly as a run does (``make_trainer`` on the run config: ``pipelines/configs/
<domain>-paper.yaml`` for ``paper``, ``digit-circle-fast.yaml`` or the defaults with the
domain's paper bottleneck for ``fast``) and times ``Trainer._train_step``, i.e. collate,
forward, loss, backward, gradient clipping (if configured) and the optimiser step, at the
preset's batch size (paper: 10 DigitCircle, 8 LaTeX and audio; fast: 32). Two batches of
real samples alternate. The bottleneck runs at the schedule's initial density (0.5)
unless ``--density`` is given.

The "eager reference" rows are the published setting written as plainly as possible:
the paper preset built with ``build_model``, ``torch.optim.Adam(lr=1e-5)``, the paper's
batch, ``sequence_loss(model(x, ids), ids[:, 1:]).backward(); opt.step()`` (which is
``model.loss``): no Trainer, no clipping. They are the baseline any optimisation of the
project's path is compared against.

FLOPs per sample: one whole training step runs under ``torch.utils.flop_counter.
FlopCounterMode`` (forward and backward; the optimiser's element-wise ops have no FLOP
formula and count 0) and the total is divided by the batch. FlopCounterMode counts
matmuls, convolutions and their backward (2 FLOPs per multiply-add). Two gaps are filled:

* CPU attention without dropout runs ``_scaled_dot_product_flash_attention_for_cpu``,
  which has no formula in torch: it is mapped to torch's own SDPA formulas
  (``sdpa_flop_count``/``sdpa_backward_flop_count``; causal masks are not discounted).
  With dropout (the paper preset in training) attention runs as bmm/softmax and is
  counted natively.
* ``nn.LSTM`` on CPU runs ``mkldnn_rnn_layer``, which is not counted at all: it is
  estimated analytically from the shapes seen by a forward hook, as the gate matmuls
  only: forward ``2 * 4H * (I + H)`` per time step, direction and sequence; backward
  twice the forward (input and weight gradients), so 3x forward in all.

Peak: a ``--peak-size`` square float32 ``torch.mm`` (default 4096, 2 n^3 FLOPs), best of
``--peak-reps``, timed in this run with the same thread count before and after the
model timings; the better of the two is the peak. Fraction of peak = FLOPs per sample x
samples/s / peak. The project's goals: paper >= 60%, fast >= 40%.

Results go to ``bench/results/train_step.json``; ``--seconds`` and ``--min-steps`` bound
the timing per row. ``peak_rss_mb`` is the process's peak resident memory over the
row's steps (model, optimiser state and activations). LaTeX is heavy on a CPU: about
1.5 GiB and several seconds per sample of batch with the paper preset (13 GiB and over a
minute per step at batch 8 on one EPYC core), 0.8 GiB per sample with the fast preset
(about 27 GiB at batch 32). A row that would not fit in MemAvailable is skipped and says so
(``--force`` runs it anyway); ``--batch`` overrides every batch size (FLOPs per sample
do not depend on it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import benchlib
from benchlib import AUDIO_ROOT, REPO, RESULTS

DOMAINS = ("digit-circle", "latex-ocr", "audio-digits")
PRESETS = ("paper", "fast")
#: Training memory per sample of batch (GiB), from peak_rss_mb at batches 1-8 on
#: the 2-core EPYC; rows that would not fit in MemAvailable are skipped unless --force.
#: The other domain/preset pairs need well under 1 GiB per sample.
MEMORY_PER_SAMPLE_GB = {("latex-ocr", "paper"): 1.5, ("latex-ocr", "fast"): 0.8}
BASE_MEMORY_GB = 2.0
#: the project's goals, as fractions of the measured float32 peak
GOAL = {"paper": 0.60, "fast": 0.40, "eager-reference": None}


def run_config(domain: str, preset: str, audio_root: str, batch: int | None) -> Any:
    """The run config a run of this domain/preset uses."""
    from sparling.config import RunConfig, load_config

    configs = REPO / "pipelines" / "configs"
    paper = load_config(configs / f"{domain}-paper.yaml")
    if preset == "paper":
        cfg = paper
    elif (configs / f"{domain}-{preset}.yaml").is_file():
        cfg = load_config(configs / f"{domain}-{preset}.yaml")
    else:  # the defaults (fast preset, AdamW, batch 32) with the domain's paper bottleneck
        cfg = RunConfig.model_validate(
            {
                "domain": paper.domain.model_dump(),
                "bottleneck": paper.bottleneck.model_dump(),
                "model": {"preset": preset},
                "max_output_len": paper.max_output_len,
            }
        )
    updates: dict[str, Any] = {"compute.gpus_per_worker": 0}
    if domain == "audio-digits":
        updates["domain.params.root"] = audio_root
    if batch is not None:
        updates["batch_size"] = batch
    return cfg.with_updates(updates)


def make_samples(cfg: Any, count: int) -> tuple[Any, list[Any]]:
    """The run's domain and its first ``count`` training samples."""
    from sparling import domains

    domain = domains.make(cfg.domain.name, **cfg.domain.params)
    return domain, [domain.sample(0, i) for i in range(count)]


# -- FLOPs -----------------------------------------------------------------------------------
class LstmShapes:
    """Forward hooks recording (batch, steps, input, hidden, directions) of every nn.LSTM."""

    def __init__(self, model: Any) -> None:
        import torch

        self.calls: list[tuple[int, int, int, int, int]] = []
        self.handles = [
            m.register_forward_hook(self._hook)
            for m in model.modules()
            if isinstance(m, torch.nn.LSTM)
        ]

    def _hook(self, module: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x = inputs[0]
        if module.batch_first:
            n, t = x.shape[0], x.shape[1]
        else:
            t, n = x.shape[0], x.shape[1]
        if module.num_layers != 1:
            raise NotImplementedError("the LSTM estimate assumes one layer")
        dirs = 2 if module.bidirectional else 1
        self.calls.append((int(n), int(t), module.input_size, module.hidden_size, dirs))

    def flops(self) -> float:
        """Gate matmuls, forward + backward (3x forward)."""
        fwd = sum(2 * n * t * d * 4 * h * (i + h) for n, t, i, h, d in self.calls)
        return 3.0 * fwd

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def flop_counter() -> Any:
    """FlopCounterMode with the CPU flash-attention ops mapped to torch's SDPA formulas."""
    import torch
    from torch.utils.flop_counter import (
        FlopCounterMode,
        sdpa_backward_flop_count,
        sdpa_flop_count,
    )

    def fwd(query: Any, key: Any, value: Any, *args: Any, out_val: Any = None, **kw: Any) -> int:
        return int(sdpa_flop_count(query, key, value))

    def bwd(
        grad_out: Any, query: Any, key: Any, value: Any, *args: Any, out_val: Any = None, **kw: Any
    ) -> int:
        return int(sdpa_backward_flop_count(grad_out, query, key, value))

    aten = torch.ops.aten
    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: fwd,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: bwd,
    }
    return FlopCounterMode(display=False, depth=2, custom_mapping=mapping)


def count_step_flops(model: Any, step: Any, batch: int) -> dict[str, Any]:
    """Run ``step()`` once under the counter; FLOPs per sample, split by module."""
    lstm = LstmShapes(model)
    counter = flop_counter()
    try:
        with counter:
            step()
    finally:
        lstm.remove()
    counted = float(counter.get_total_flops())
    # FlopCounterMode attributes the backward of g's convolutions to g correctly, but not
    # all of h's (its module tracker loses track in the decoder's backward), so h is the
    # remainder: everything counted outside g and the bottleneck, plus the LSTM estimate.
    counts = {name: float(sum(ops.values())) for name, ops in counter.get_flop_counts().items()}
    top = type(model).__name__
    lstm_counted = sum(v for k, v in counts.items() if "lstm" in k.lower())
    lstm_est = lstm.flops() if lstm_counted == 0 else 0.0
    out: dict[str, Any] = {
        "flops_per_sample": (counted + lstm_est) / batch,
        "flops_counted_per_sample": counted / batch,
        "lstm_flops_estimated_per_sample": lstm_est / batch,
    }
    if f"{top}.g" in counts:  # the step went through model(...): names are known
        g = counts[f"{top}.g"]
        bottleneck = counts.get(f"{top}.bottleneck", 0.0)  # element-wise only: 0
        out["flops_split_per_sample"] = {
            "g": g / batch,
            "bottleneck": bottleneck / batch,
            "h_and_loss": (counted - g - bottleneck + lstm_est) / batch,
        }
    return out


# -- one row -----------------------------------------------------------------------------------
def project_row(
    domain: str, preset: str, threads: int, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """Time the project's own training step (``Trainer._train_step``)."""
    from sparling.train import make_trainer

    cfg = run_config(domain, preset, args.audio_root, args.batch)
    bs = cfg.batch_size
    _, samples = make_samples(cfg, 2 * bs)
    batches = [samples[:bs], samples[bs:]]
    trainer = make_trainer(cfg, samples, samples[:1], work / f"{domain}-{preset}", progress=False)
    if args.density is not None:
        trainer.bottleneck.set_density(args.density)
    benchlib.set_threads(threads)
    state = {"i": 0}

    def step() -> None:
        trainer._train_step(batches[state["i"] % 2])
        state["i"] += 1

    row = {
        "variant": "project",
        "domain": domain,
        "preset": preset,
        "threads": threads,
        "batch": bs,
        "optimizer": f"{cfg.optim.name} lr={cfg.optim.lr:g} clip={cfg.optim.grad_clip}",
        "bottleneck": {"name": cfg.bottleneck.name, **cfg.bottleneck.params},
        "density": float(trainer.bottleneck.density),
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "config": cfg.model_dump(mode="json"),
    }
    benchlib.reset_peak_rss()
    row.update(count_step_flops(trainer.model, step, bs))
    row["timing"] = benchlib.time_reps(
        step, seconds=args.seconds, min_reps=args.min_steps, warmup=args.warmup, threads=threads
    )
    row["peak_rss_mb"] = benchlib.peak_rss_mb()
    row["load_average"] = benchlib.loadavg()
    return row


def reference_row(domain: str, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    """The published setting, plain eager: build_model, Adam(1e-5), loss.backward(), step()."""
    import torch

    from sparling.models import build_model, sequence_loss
    from sparling.scoring import collate_inputs
    from sparling.seeding import set_seed

    cfg = run_config(domain, "paper", args.audio_root, args.batch)
    bs = cfg.batch_size
    dom, samples = make_samples(cfg, 2 * bs)
    set_seed(0)
    model = build_model(dom, "paper", cfg.bottleneck.name, cfg.bottleneck.params)
    bottleneck: Any = model.bottleneck
    bottleneck.set_density(args.density if args.density is not None else 0.5)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    batches = [
        (collate_inputs(b), model.token_ids([s.tokens for s in b]))
        for b in (samples[:bs], samples[bs:])
    ]
    benchlib.set_threads(threads)
    state = {"i": 0}

    def step() -> None:
        x, ids = batches[state["i"] % 2]
        state["i"] += 1
        # model(x, ids) then the loss: model.loss(x, ids) exactly, but through the module
        # call, so that FlopCounterMode can attribute FLOPs to g and h
        loss = sequence_loss(model(x, ids), ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()

    row = {
        "variant": "eager-reference",
        "domain": domain,
        "preset": "paper",
        "threads": threads,
        "batch": bs,
        "optimizer": "adam lr=1e-05 clip=None",
        "bottleneck": {"name": cfg.bottleneck.name, **cfg.bottleneck.params},
        "density": float(bottleneck.density),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    benchlib.reset_peak_rss()
    row.update(count_step_flops(model, step, bs))
    row["timing"] = benchlib.time_reps(
        step, seconds=args.seconds, min_reps=args.min_steps, warmup=args.warmup, threads=threads
    )
    row["peak_rss_mb"] = benchlib.peak_rss_mb()
    row["load_average"] = benchlib.loadavg()
    return row


def memory_problem(domain: str, preset: str, args: argparse.Namespace) -> str | None:
    """Why this row would not fit in memory (None if it should)."""
    per = MEMORY_PER_SAMPLE_GB.get((domain, preset))
    available = benchlib.mem_available_gb()
    if per is None or available is None:
        return None
    batch = args.batch or run_config(domain, preset, args.audio_root, None).batch_size
    need = BASE_MEMORY_GB + per * batch
    if need <= available:
        return None
    return (
        f"needs about {need:.0f} GiB ({per} GiB per sample x batch {batch}), "
        f"MemAvailable is {available:.0f} GiB; use --batch, or --force to try anyway"
    )


def finish_row(row: dict[str, Any], peak_gflops: float | None) -> dict[str, Any]:
    t = row["timing"]
    row["samples_per_s"] = round(row["batch"] / t["median_s"], 4)
    row["samples_per_s_mean"] = round(row["batch"] * t["reps"] / sum(t["rep_wall_s"]), 4)
    row["achieved_gflops"] = round(row["flops_per_sample"] * row["samples_per_s"] / 1e9, 3)
    row["peak_gflops"] = peak_gflops
    if peak_gflops:
        row["fraction_of_peak"] = round(row["achieved_gflops"] / peak_gflops, 4)
        goal = GOAL.get(row["variant"] if row["variant"] != "project" else row["preset"])
        row["goal_fraction"] = goal
        row["meets_goal"] = None if goal is None else row["fraction_of_peak"] >= goal
    return row


def main(argv: list[str] | None = None) -> int:
    parser = benchlib.make_parser(__doc__)
    parser.add_argument("--domains", nargs="+", choices=DOMAINS, default=list(DOMAINS))
    parser.add_argument("--presets", nargs="+", choices=PRESETS, default=list(PRESETS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--seconds", type=float, default=30.0, help="timing per row (s)")
    parser.add_argument("--min-steps", type=int, default=3, help="timed steps per row, at least")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed steps after the FLOP-counting step"
    )
    parser.add_argument("--batch", type=int, help="override every batch size (None: the preset's)")
    parser.add_argument(
        "--density", type=float, help="bottleneck density (None: the schedule's initial 0.5)"
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the eager reference")
    parser.add_argument(
        "--force", action="store_true", help="run rows even if they look too big for memory"
    )
    parser.add_argument("--peak-size", type=int, default=4096, help="matmul size for the peak")
    parser.add_argument("--peak-reps", type=int, default=3)
    parser.add_argument("--audio-root", default=str(AUDIO_ROOT), help="audio-digits recordings")
    parser.add_argument("--out", type=Path, default=RESULTS / "train_step.json")
    args = parser.parse_args(argv)

    load_before = benchlib.loadavg()
    import torch

    torch.set_num_interop_threads(1)
    rows: list[dict[str, Any]] = []
    peaks: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-train-step-") as tmp:
        for threads in args.threads:
            before = benchlib.matmul_peak(threads, args.peak_size, args.peak_reps)
            peaks.append({**before, "when": "before"})
            todo: list[tuple[str, str, str]] = [
                ("project", d, p) for d in args.domains for p in args.presets
            ]
            if not args.no_reference and "paper" in args.presets:
                todo += [("eager-reference", d, "paper") for d in args.domains]
            measured: list[dict[str, Any]] = []
            for variant, domain, preset in todo:
                print(f"... {variant} {domain} {preset} threads={threads}", flush=True)
                too_big = None if args.force else memory_problem(domain, preset, args)
                if too_big:
                    print(f"    skipped: {too_big}", flush=True)
                    measured.append(
                        {
                            "variant": variant,
                            "domain": domain,
                            "preset": preset,
                            "threads": threads,
                            "status": "skipped",
                            "error": too_big,
                        }
                    )
                    continue
                try:
                    if variant == "project":
                        row = project_row(domain, preset, threads, args, Path(tmp))
                    else:
                        row = reference_row(domain, threads, args)
                except Exception as e:  # reported, not fatal (e.g. audio data missing)
                    row = {
                        "variant": variant,
                        "domain": domain,
                        "preset": preset,
                        "threads": threads,
                        "status": "failed",
                        "error": f"{type(e).__name__}: {e}"[:500],
                    }
                measured.append(row)
            after = benchlib.matmul_peak(threads, args.peak_size, args.peak_reps)
            peaks.append({**after, "when": "after"})
            peak = max(before["gflops_best"], after["gflops_best"])
            for row in measured:
                if "timing" in row:
                    row["status"] = "ok"
                    finish_row(row, peak)
            rows += measured

    report = benchlib.write_report(
        args.out,
        argv=argv,
        load_before=load_before,
        settings=vars(args),
        peaks=peaks,
        results=rows,
    )
    ok = [dict(r) for r in rows if r.get("status") == "ok"]  # display copies
    for r in ok:
        r["gflop"] = r["flops_per_sample"] / 1e9
        r["lstm_gflop"] = r["lstm_flops_estimated_per_sample"] / 1e9
        r["pct_peak"] = 100 * r.get("fraction_of_peak", float("nan"))
        r["goal"] = (
            "-"
            if r.get("meets_goal") is None
            else ("meets" if r["meets_goal"] else "BELOW") + f" {100 * r['goal_fraction']:.0f}%"
        )
        r["reps"] = r["timing"]["reps"]
        r["cpu_share"] = r["timing"]["cpu_share"]
    benchlib.print_table(
        ok,
        [
            ("domain", "domain", ""),
            ("preset", "preset", ""),
            ("variant", "variant", ""),
            ("threads", "thr", "d"),
            ("batch", "batch", "d"),
            ("samples_per_s", "samples/s", ".2f"),
            ("gflop", "GFLOP/sample", ".2f"),
            ("lstm_gflop", "(LSTM est.)", ".2f"),
            ("achieved_gflops", "GFLOP/s", ".1f"),
            ("peak_gflops", "peak", ".1f"),
            ("pct_peak", "% peak", ".1f"),
            ("goal", "goal", ""),
            ("reps", "reps", "d"),
            ("cpu_share", "cpu share", ".2f"),
            ("peak_rss_mb", "RSS MB", ".0f"),
        ],
    )
    for r in rows:
        if r.get("status") != "ok":
            print(
                f"{r['domain']} {r['preset']} {r['variant']} threads={r['threads']}: {r['error']}"
            )
    for p in peaks:
        print(
            f"peak ({p['when']}, {p['threads']} thread(s), {p['size']}^2 matmul): "
            f"{p['gflops_best']:.1f} GFLOP/s best, {p['gflops_median']:.1f} median"
        )
    benchlib.print_footer(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
