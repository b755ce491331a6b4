"""Cost of the sparsity layer alone against a plain ReLU of the same size.

    .venv/bin/python bench/bench_sparsity.py [--cases dc latex] [--densities D ...]
        [--threads 1] [--seconds S] [--out FILE]

Forward + backward (training mode, a fixed random gradient fed to ``backward``) of
``SpatialSparsity`` on inputs of the paper's sizes, against:

* ``relu``: ``torch.relu`` on the same tensor (the project's yardstick: the layer should
  cost at most 2x a ReLU);
* ``batchnorm+relu``: ``nn.BatchNorm2d`` then ReLU (for context: the layer is a batch
  norm plus a quantile threshold).

Cases (the paper's): ``dc`` DigitCircle, N=10, C=10, 100x100, affine batch norm; ``latex``
LaTeX-OCR, N=8, C=32, 120x360, plain batch norm with the accumulated quantile (about 10
expected survivors per update). Every case runs at each ``--densities`` value (the
threshold is selected differently at high and low density) and, for ``dc``, also in the
accumulated-quantile mode at density 1e-5 (``accumulate_motifs=10``, where the paper
pools batches). Ratios use medians (``ratio_to_relu_mean``: means, which spread the
pooled mode's occasional threshold update over the batches). Forward-only times are recorded too. Inputs are ``randn`` scaled per
channel; the thresholds are warmed up before timing. One thread by default.
Results go to ``bench/results/sparsity.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import benchlib
from benchlib import RESULTS

CASES: dict[str, dict[str, Any]] = {
    "dc": {"shape": (10, 10, 100, 100), "batch_norm": "affine", "accumulate_motifs": None},
    "latex": {"shape": (8, 32, 120, 360), "batch_norm": "plain", "accumulate_motifs": 10},
}
GOAL_RATIO = 2.0


def variants(case: dict[str, Any], densities: list[float]) -> list[dict[str, Any]]:
    """(label, SpatialSparsity kwargs) for one case; the baselines come separately."""
    out = [
        {
            "layer": "sparsity",
            "density": d,
            "batch_norm": case["batch_norm"],
            "accumulate_motifs": case["accumulate_motifs"],
        }
        for d in densities
    ]
    if case["accumulate_motifs"] is None:
        out.append(
            {
                "layer": "sparsity",
                "density": 1e-5,
                "batch_norm": case["batch_norm"],
                "accumulate_motifs": 10,
            }
        )
    return out


def time_layer(
    make: Any, shape: tuple[int, ...], threads: int, args: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(forward+backward, forward only) timings of ``make()``'s module on ``shape``."""
    import torch

    gen = torch.Generator().manual_seed(0)
    scale = torch.linspace(1, 5, shape[1]).view(1, -1, *([1] * (len(shape) - 2)))
    x = (torch.randn(shape, generator=gen) * scale).requires_grad_()
    grad = torch.randn(shape, generator=gen)
    module = make()
    module.train()
    for _ in range(args.settle):  # thresholds / running statistics settle
        module(x.detach())

    def fwd_bwd() -> None:
        x.grad = None
        module(x).backward(grad)

    def fwd() -> None:
        with torch.no_grad():
            module(x)

    both = benchlib.time_reps(
        fwd_bwd,
        seconds=args.seconds,
        min_reps=args.min_reps,
        max_reps=args.max_reps,
        warmup=2,
        threads=threads,
    )
    only = benchlib.time_reps(
        fwd,
        seconds=args.seconds / 2,
        min_reps=args.min_reps,
        max_reps=args.max_reps,
        warmup=2,
        threads=threads,
    )
    return both, only


def main(argv: list[str] | None = None) -> int:
    parser = benchlib.make_parser(__doc__)
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=sorted(CASES))
    parser.add_argument(
        "--densities", nargs="+", type=float, default=[0.5, 0.05, 1e-3, 5e-5], help="per case"
    )
    parser.add_argument("--threads", nargs="+", type=int, default=[1])
    parser.add_argument("--seconds", type=float, default=5.0, help="timing per row (s)")
    parser.add_argument("--min-reps", type=int, default=10)
    parser.add_argument(
        "--max-reps", type=int, default=500, help="at most (keeps the JSON small for ReLU)"
    )
    parser.add_argument("--settle", type=int, default=3, help="untimed training calls first")
    parser.add_argument("--out", type=Path, default=RESULTS / "sparsity.json")
    args = parser.parse_args(argv)

    load_before = benchlib.loadavg()
    import torch
    from torch import nn

    from sparling import SpatialSparsity

    torch.set_num_interop_threads(1)
    rows: list[dict[str, Any]] = []
    for threads in args.threads:
        benchlib.set_threads(threads)
        for name in args.cases:
            case = CASES[name]
            shape = case["shape"]
            channels = shape[1]

            def relu() -> nn.Module:
                return nn.ReLU()

            def bn_relu(channels: int = channels) -> nn.Module:
                return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU())

            todo: list[tuple[dict[str, Any], Any]] = [
                ({"layer": "relu"}, relu),
                ({"layer": "batchnorm+relu"}, bn_relu),
            ]
            for v in variants(case, args.densities):

                def make(v: dict[str, Any] = v, channels: int = channels) -> nn.Module:
                    return SpatialSparsity(
                        channels=channels,
                        density=v["density"],
                        batch_norm=v["batch_norm"],
                        accumulate_motifs=v["accumulate_motifs"],
                    )

                todo.append((v, make))
            case_rows = []
            for label, make in todo:
                what = " ".join(f"{k}={v}" for k, v in label.items() if v is not None)
                print(f"... {name} {what} threads={threads}", flush=True)
                both, only = time_layer(make, shape, threads, args)
                case_rows.append(
                    {
                        "case": name,
                        "shape": list(shape),
                        "threads": threads,
                        **label,
                        "fwd_bwd": both,
                        "fwd": only,
                        "load_average": benchlib.loadavg(),
                    }
                )
            relu_t = case_rows[0]["fwd_bwd"]["median_s"]
            relu_m = case_rows[0]["fwd_bwd"]["mean_s"]
            relu_f = case_rows[0]["fwd"]["median_s"]
            for r in case_rows:
                r["ratio_to_relu"] = round(r["fwd_bwd"]["median_s"] / relu_t, 3)
                r["ratio_to_relu_mean"] = round(r["fwd_bwd"]["mean_s"] / relu_m, 3)
                r["fwd_ratio_to_relu"] = round(r["fwd"]["median_s"] / relu_f, 3)
                if r["layer"] == "sparsity":
                    r["meets_goal"] = r["ratio_to_relu"] <= GOAL_RATIO
            rows += case_rows

    report = benchlib.write_report(
        args.out, argv=argv, load_before=load_before, settings=vars(args), results=rows
    )
    show = [
        {
            **r,
            "ms": 1e3 * r["fwd_bwd"]["median_s"],
            "fwd_ms": 1e3 * r["fwd"]["median_s"],
            "reps": r["fwd_bwd"]["reps"],
            "cpu_share": r["fwd_bwd"]["cpu_share"],
            "acc": r.get("accumulate_motifs"),
        }
        for r in rows
    ]
    benchlib.print_table(
        show,
        [
            ("case", "case", ""),
            ("layer", "layer", ""),
            ("batch_norm", "bn", ""),
            ("density", "density", "g"),
            ("acc", "accumulate", ""),
            ("threads", "thr", "d"),
            ("ms", "fwd+bwd ms", ".2f"),
            ("ratio_to_relu", "x relu", ".2f"),
            ("fwd_ms", "fwd ms", ".2f"),
            ("fwd_ratio_to_relu", "x relu", ".2f"),
            ("reps", "reps", "d"),
            ("cpu_share", "cpu share", ".2f"),
        ],
    )
    print(f"goal: sparsity layer fwd+bwd <= {GOAL_RATIO:.0f}x ReLU")
    benchlib.print_footer(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
