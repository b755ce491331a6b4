"""What the benchmarks under ``bench/`` share: host description, timing, the matmul peak,
dataset set-up and the JSON/table output.

Conventions (those of ``bench_data.py``): every script writes one JSON file under
``bench/results/`` holding ``created``, ``command``, ``host`` (CPU model, CPUs visible,
threads, versions, load average before and after) and ``results`` (one row per
measurement, with every repetition's time), and prints a table. On a shared machine
wall-clock rates also measure the neighbours: each repetition records the process CPU
time next to the wall time, and ``cpu_share`` (CPU time / (wall time x threads)) shows
how much of the asked-for CPU the process actually got (near 1 on a quiet machine).

Imported by the scripts as a sibling module (``python bench/<script>.py`` puts
``bench/`` first on ``sys.path``); importing it does not import torch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from sparling.fileio import atomic_write_json  # noqa: E402

RESULTS = REPO / "bench" / "results"
#: Datasets and run folders the benchmarks create (git-ignored, reused between runs).
WORK = REPO / "sparling-work" / "bench"
#: Default recordings folder for audio-digits (the shared FSDD copy).
AUDIO_ROOT = (REPO / ".." / "shared" / "data" / "fsdd").resolve()


# -- host ------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def cpu_flags() -> list[str]:
    """The SIMD flags that matter for float32 peak (AVX2/FMA/AVX-512), from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f in ("avx2", "fma", "avx512f", "avx512_bf16"))
    except OSError:
        pass
    return []


def versions(
    packages: Iterable[str] = ("torch", "numpy", "pyarrow", "ray", "mlflow"),
) -> dict[str, str | None]:
    """Installed versions (read from package metadata: nothing is imported)."""
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def host_info(**extra: Any) -> dict[str, Any]:
    """Machine, software and (if torch is loaded) torch's threading/CPU back-end."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpus_visible": os.cpu_count(),
        "cpus_allowed": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "versions": versions(),
        "env_threads": {
            k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ
        },
    }
    if "torch" in sys.modules:
        import torch

        info["torch"] = {
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkldnn": torch.backends.mkldnn.is_available(),
            "mkl": torch.backends.mkl.is_available(),
            "interop_threads": torch.get_num_interop_threads(),
        }
    info.update(extra)
    return info


def mem_available_gb() -> float | None:
    """MemAvailable from /proc/meminfo, in GiB (None where unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return round(int(line.split()[1]) / 1024**2, 2)
    except (OSError, ValueError):
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process's peak resident memory (Linux ``clear_refs``); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process (since the last reset), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


# -- timing ----------------------------------------------------------------------------------
def summarize(times: Sequence[float]) -> dict[str, float]:
    return {
        "median_s": round(statistics.median(times), 6),
        "min_s": round(min(times), 6),
        "mean_s": round(statistics.fmean(times), 6),
        "stdev_s": round(statistics.stdev(times), 6) if len(times) > 1 else 0.0,
    }


def time_reps(
    fn: Callable[[], object],
    *,
    seconds: float,
    min_reps: int = 3,
    max_reps: int | None = None,
    warmup: int = 1,
    threads: int = 1,
) -> dict[str, Any]:
    """Call ``fn`` ``warmup`` times untimed, then repeatedly for about ``seconds`` (at least
    ``min_reps``, at most ``max_reps`` times); every repetition's wall and CPU time is kept.

    ``cpu_share`` is process CPU time / (wall time x ``threads``): the fraction of the
    requested cores the process got (low values mean it was waiting for a CPU).
    """
    for _ in range(warmup):
        fn()
    walls: list[float] = []
    cpus: list[float] = []
    start = time.perf_counter()
    while True:
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        w1, c1 = time.perf_counter(), time.process_time()
        walls.append(w1 - w0)
        cpus.append(c1 - c0)
        if max_reps is not None and len(walls) >= max_reps:
            break
        if len(walls) >= min_reps and w1 - start >= seconds:
            break
    total_wall, total_cpu = sum(walls), sum(cpus)
    return {
        "reps": len(walls),
        "warmup": warmup,
        **summarize(walls),
        "rep_wall_s": [round(t, 6) for t in walls],
        "rep_cpu_s": [round(t, 6) for t in cpus],
        "cpu_share": round(total_cpu / (total_wall * threads), 3) if total_wall > 0 else None,
    }


def set_threads(threads: int) -> None:
    """torch intra-op threads (OpenMP/MKL/oneDNN pools follow torch's setting)."""
    import torch

    torch.set_num_threads(threads)


def matmul_peak(threads: int, size: int = 4096, reps: int = 3) -> dict[str, Any]:
    """The machine's own float32 peak: best GFLOP/s of a ``size`` x ``size`` matmul
    (2 size^3 FLOPs) with ``threads`` torch threads, after one warm-up."""
    import torch

    set_threads(threads)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)
    out = torch.empty(size, size)
    t = time_reps(
        lambda: torch.mm(a, b, out=out),
        seconds=0.0,
        min_reps=reps,
        max_reps=reps,
        threads=threads,
    )
    flops = 2.0 * size**3
    return {
        "threads": threads,
        "size": size,
        "flops": flops,
        "gflops_best": round(flops / t["min_s"] / 1e9, 2),
        "gflops_median": round(flops / t["median_s"] / 1e9, 2),
        "load_average": loadavg(),
        **t,
    }


# -- data ------------------------------------------------------------------------------------
def ensure_dataset(
    root: Path,
    domain: str,
    split: str,
    seed: int,
    count: int,
    shards: int,
    params: Mapping[str, Any] | None = None,
) -> tuple[Path, float | None]:
    """The dataset's canonical folder under ``root`` (as ``pipelines`` names it), written
    in this process (no Ray) if it is not there yet. Returns (folder, seconds spent
    generating, or None if it was already complete)."""
    from sparling.shards import (
        ShardedDataset,
        plan_dataset,
        remove_stale_temps,
        write_manifest,
        write_shard,
    )

    plan = plan_dataset(domain, dict(params or {}), split, seed, count, shards)
    out = Path(root).resolve() / plan.folder_name
    try:
        ShardedDataset(out, expected_hash=plan.dataset_hash)
        return out, None
    except Exception:
        pass
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    t0 = time.perf_counter()
    infos = [
        write_shard(
            plan.domain,
            plan.seed,
            start,
            stop,
            out,
            shard=k,
            num_shards=plan.shards,
            ds_hash=plan.dataset_hash,
        )
        for k, (start, stop) in enumerate(plan.ranges)
    ]
    write_manifest(out, plan.manifest(infos))
    return out, time.perf_counter() - t0


# -- command line ----------------------------------------------------------------------------
class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option; the script's docstring kept as written."""


def make_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose ``--help`` prints the script's whole docstring."""
    return argparse.ArgumentParser(description=doc, formatter_class=_Formatter)


# -- output ----------------------------------------------------------------------------------
def command_line(argv: Sequence[str] | None) -> str:
    script = Path(sys.argv[0]).name
    return " ".join([script, *(argv if argv is not None else sys.argv[1:])])


def write_report(
    out: Path,
    *,
    argv: Sequence[str] | None,
    load_before: list[float] | None,
    results: list[dict[str, Any]],
    settings: Mapping[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """Write the JSON report (atomically) and return it."""
    report = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command_line(argv),
        "settings": dict(settings),
        "host": host_info(load_average_before=load_before, load_average_after=loadavg()),
        **extra,
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, report, indent=2, default=_json_default)
    return report


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):  # numpy scalars and arrays
        return o.tolist()
    return str(o)


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, str]]) -> None:
    """Print ``rows`` as a fixed-width table; ``columns`` are (key, header, format spec)."""
    cells = [
        [_fmt(row.get(key), spec) for key, _, spec in columns] for row in rows
    ]  # formatted first, so widths fit the values
    headers = [h for _, h, _ in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]
    print(
        "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths)))
    )
    for c in cells:
        print("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(c, widths))))


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    if spec and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    return str(value)


def print_footer(report: Mapping[str, Any], out: Path) -> None:
    host = report["host"]
    print(
        f"load average before/after: {host['load_average_before']} / "
        f"{host['load_average_after']}  ({host['cpu_model']}, {host['cpus_visible']} CPUs)"
    )
    print(f"wrote {out}")
