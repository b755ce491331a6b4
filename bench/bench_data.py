"""Data-generation throughput of every registered domain, on one core.

    .venv/bin/python bench/bench_data.py [--domains NAME ...] [--seconds S]
                                         [--audio-root DIR] [--out FILE]

For each domain in ``sparling.domains.names()`` (or ``--domains``) it builds the domain
with its default parameters (audio domains get ``root=--audio-root``), draws samples
``index = 0, 1, ...`` for ``--seconds`` and reports samples per second of wall time and
of process CPU time. Domains that fail to build are listed as skipped with the error.
DigitCircle is also timed through ``reference_sample``, its literal implementation, to
show what the fast path buys. Results go to ``bench/results/data_generation.json``.

One core: BLAS/OpenMP pools are limited to one thread (set before numpy is imported),
torch to one thread if a domain loaded it, and the process is pinned to a single CPU
where the OS allows. On a shared machine wall-clock rates also measure the neighbours;
the CPU-time rate is the less disturbed figure, and the load average is recorded.
"""

from __future__ import annotations

import os

# Before numpy/torch are imported, or their thread pools are already sized.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from sparling import domains  # noqa: E402

#: The project's requirement for DigitCircle, in samples per second on one core.
REQUIRED = {"digit-circle": 5000.0}


def pin_to_one_cpu() -> int | None:
    """Pin this process to the first CPU it may run on; returns it (None if unsupported)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def limit_torch_threads() -> None:
    if "torch" in sys.modules:  # only if a domain imported it; importing it costs seconds
        import torch

        torch.set_num_threads(1)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def time_sampler(draw: Callable[[int], object], seconds: float) -> dict[str, float]:
    """Call ``draw(0), draw(1), ...`` for about ``seconds`` (after one untimed warm-up)."""
    t0 = time.perf_counter()
    draw(0)
    first = time.perf_counter() - t0
    count, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
    deadline = wall0 + seconds
    while True:
        # check the clock every 16 samples: cheap next to a sample, fine-grained enough
        for _ in range(16):
            draw(count + 1)
            count += 1
        if time.perf_counter() >= deadline:
            break
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {
        "samples": count,
        "wall_s": round(wall, 4),
        "cpu_s": round(cpu, 4),
        "samples_per_s": round(count / wall, 1),
        "samples_per_cpu_s": round(count / cpu, 1) if cpu > 0 else float("nan"),
        "first_sample_s": round(first, 4),
    }


def build(name: str, audio_root: str) -> domains.Domain:
    """The domain with default parameters; one that needs data (audio) gets ``root=``."""
    try:
        return domains.make(name)
    except Exception as plain:
        try:
            return domains.make(name, root=audio_root)
        except Exception as with_root:
            raise RuntimeError(f"{plain}; with root={audio_root!r}: {with_root}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--domains", nargs="+", help="domains to time (default: all registered)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing per domain (s)")
    parser.add_argument(
        "--audio-root",
        default=str((REPO / ".." / "shared" / "data" / "fsdd").resolve()),
        help="recordings folder passed as root= to domains that take one",
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results" / "data_generation.json"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    args = parser.parse_args(argv)

    pinned = None if args.no_pin else pin_to_one_cpu()
    registered = domains.names()
    wanted = args.domains or registered
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None

    rows: list[dict[str, Any]] = []
    for name in wanted:
        row: dict[str, Any] = {"domain": name, "implementation": "sample"}
        if name not in registered:
            rows.append({**row, "status": "skipped", "error": "not registered"})
            continue
        try:
            domain = build(name, args.audio_root)
        except Exception as e:  # any build failure is reported, not fatal
            rows.append({**row, "status": "skipped", "error": f"{type(e).__name__}: {e}"[:500]})
            continue
        limit_torch_threads()
        row["spec"] = domain.spec()
        try:
            row.update(time_sampler(partial(domain.sample, 0), args.seconds))
            row["status"] = "ok"
        except Exception as e:
            row.update(status="failed", error=f"{type(e).__name__}: {e}"[:500])
        rows.append(row)
        if name == "digit-circle":
            from sparling.domains.digit_circle import DigitCircle, reference_sample

            assert isinstance(domain, DigitCircle)
            ref: dict[str, Any] = {
                "domain": name,
                "implementation": "reference_sample",
                "spec": domain.spec(),
            }
            ref.update(
                time_sampler(partial(reference_sample, domain, 0), args.seconds),
                status="ok",
            )
            rows.append(ref)

    for row in rows:
        need = REQUIRED.get(row["domain"])
        if need is not None and row["implementation"] == "sample" and row["status"] == "ok":
            row["required_samples_per_s"] = need
            row["meets_requirement_cpu"] = row["samples_per_cpu_s"] >= need
            row["meets_requirement_wall"] = row["samples_per_s"] >= need

    report = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "seconds_per_domain": args.seconds,
        "host": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "platform": platform.platform(),
            "cpu_model": cpu_model(),
            "cpus_visible": os.cpu_count(),
            "pinned_cpu": pinned,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"{'domain':<16} {'implementation':<18} {'samples/s':>10} {'/cpu-s':>10} {'n':>8}  note")
    for row in rows:
        if row["status"] == "ok":
            note = ""
            if "required_samples_per_s" in row:
                ok = "meets" if row["meets_requirement_cpu"] else "BELOW"
                note = f"{ok} {row['required_samples_per_s']:.0f}/s requirement (cpu time)"
            print(
                f"{row['domain']:<16} {row['implementation']:<18} {row['samples_per_s']:>10.1f}"
                f" {row['samples_per_cpu_s']:>10.1f} {row['samples']:>8}  {note}"
            )
        else:
            print(
                f"{row['domain']:<16} {row['implementation']:<18} {row['status']}: {row['error']}"
            )
    la = report["host"]
    print(f"load average before/after: {la['load_average_before']} / {la['load_average_after']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
