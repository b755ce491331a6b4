"""Checkpoint I/O of one validation of a Ray Train run: the run folder's checkpoint alone
(its one owner: what ``pipelines/train_job.py`` does) against the same checkpoint and
then Ray Train's copy of it (``ray.train.report(metrics, checkpoint=...)`` into Ray's
storage, with ``CheckpointConfig(num_to_keep=2)``: what it did before).

    .venv/bin/python bench/bench_checkpoint_io.py [--presets fast paper] [--reps 5]
        [--pause 4] [--out FILE]

One Ray Train job on a local Ray (one worker, 1 CPU), its storage and the run folders
under ``sparling-work/bench/checkpoint_io`` (one disk, as a work dir on shared storage
holds both). For each DigitCircle preset (``pipelines/configs/digit-circle-<preset>.yaml``
on the CPU), the worker builds the run's trainer and trains one batch, so that the
optimiser's moments exist (a validation's checkpoint holds them: about three times the
weights), then does a validation's checkpoint I/O ``--reps`` times in each mode, the two
modes alternating so that both meet the same machine, ``--pause`` seconds apart (Ray
Train holds a report until its controller has taken the one before, which it looks for
every couple of seconds: validations minutes apart never meet that wait):

* ``owner``: ``trainer.save("last")`` (serialised, written, fsynced, renamed into place),
  then ``ray.train.report(metrics)``;
* ``copied``: the same save, then ``ray.train.report(metrics, checkpoint=...)`` of that
  folder, which Ray Train copies into its storage (and prunes to the last two).

Each repetition records the wall time of the save and of the report, and the bytes the
worker process wrote (``wchar`` in ``/proc/self/io``: every ``write`` call, whether or not
the page cache has flushed it yet); Ray's storage is measured after each mode. Results go
to ``bench/results/checkpoint_io.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import benchlib
from benchlib import RESULTS, WORK

REPO = Path(__file__).resolve().parents[1]
WORK_DIR = WORK / "checkpoint_io"


def _wchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def worker(loop: dict[str, Any]) -> None:
    """The Ray Train worker: measures each preset in both modes, writes the rows."""
    import ray.train
    import torch

    from sparling import domains
    from sparling.config import load_config
    from sparling.train import make_trainer

    torch.set_num_threads(1)
    storage = Path(loop["storage"])
    rows: list[dict[str, Any]] = []
    for preset in loop["presets"]:
        base = load_config(REPO / "pipelines" / "configs" / f"digit-circle-{preset}.yaml")
        batch = base.batch_size
        cfg = base.with_updates(
            {
                "compute.gpus_per_worker": 0,
                "compute.cpus_per_worker": 1,
                "budget_samples": batch,
                "val_interval": batch,
            }
        )
        d = domains.make("digit-circle", split="train")
        train = [d.sample(0, i) for i in range(batch)]
        val = [domains.make("digit-circle", split="val").sample(0, i) for i in range(2)]
        run_dir = Path(loop["runs"]) / cfg.run_id()
        shutil.rmtree(run_dir, ignore_errors=True)
        trainer = make_trainer(cfg, train, val, run_dir, progress=False)
        trainer.fit()  # one step and one validation: the optimiser's state exists
        last = trainer.folder.last
        print(f"{preset}: checkpoint of {_folder_bytes(last) / 1e6:.1f} MB", flush=True)
        times: dict[str, dict[str, list[float]]] = {
            m: {"save_s": [], "report_s": [], "written_bytes": []} for m in ("owner", "copied")
        }
        for rep in range(loop["reps"]):
            for mode in ("owner", "copied") if rep % 2 == 0 else ("copied", "owner"):
                # Ray Train paces reports (a report waits for the controller to take the
                # one before, polled every couple of seconds); validations are minutes
                # apart, so each timed one starts with nothing waiting
                time.sleep(loop["pause"])
                written = _wchar()
                t0 = time.perf_counter()
                trainer.save("last")
                t1 = time.perf_counter()
                if mode == "copied":
                    checkpoint = ray.train.Checkpoint.from_directory(str(last))
                    ray.train.report({"rep": rep}, checkpoint=checkpoint)
                else:
                    ray.train.report({"rep": rep})
                t2 = time.perf_counter()
                times[mode]["save_s"].append(t1 - t0)
                times[mode]["report_s"].append(t2 - t1)
                times[mode]["written_bytes"].append(float(_wchar() - written))
                print(f"  {preset} {mode} rep {rep}: {t2 - t0:.3f} s", flush=True)
        checkpoint_bytes = _folder_bytes(last)
        for mode, t in times.items():
            total = [s + r for s, r in zip(t["save_s"], t["report_s"], strict=True)]
            rows.append(
                {
                    "preset": preset,
                    "mode": mode,
                    "parameters": sum(p.numel() for p in trainer.model.parameters()),
                    "checkpoint_bytes": checkpoint_bytes,
                    "written_bytes_median": statistics.median(t["written_bytes"]),
                    "save_s_median": statistics.median(t["save_s"]),
                    "report_s_median": statistics.median(t["report_s"]),
                    "total_s_median": statistics.median(total),
                    **{f"rep_{k}": [round(v, 6) for v in vs] for k, vs in t.items()},
                    "ray_storage_bytes_after": _folder_bytes(storage),
                    "load_average": [round(x, 2) for x in os.getloadavg()],
                }
            )
    Path(loop["out"]).write_text(json.dumps(rows))


def main(argv: list[str] | None = None) -> None:
    parser = benchlib.make_parser(__doc__)
    parser.add_argument("--presets", nargs="+", default=["fast", "paper"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--pause", type=float, default=4.0, help="seconds between validations, untimed"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "checkpoint_io.json")
    args = parser.parse_args(argv)
    load_before = benchlib.loadavg()

    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipelines.ray_env import ensure_ray

    shutil.rmtree(WORK_DIR, ignore_errors=True)
    storage = WORK_DIR / "ray"
    rows_file = WORK_DIR / "rows.json"
    WORK_DIR.mkdir(parents=True)
    ensure_ray(num_cpus=1)
    TorchTrainer(
        worker,
        train_loop_config={
            "presets": args.presets,
            "reps": args.reps,
            "pause": args.pause,
            "storage": str(storage),
            "runs": str(WORK_DIR / "runs"),
            "out": str(rows_file),
        },
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1.0}),
        run_config=ray.train.RunConfig(
            name="checkpoint-io",
            storage_path=str(storage),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    ).fit()
    ray.shutdown()
    rows = json.loads(rows_file.read_text())
    by = {(r["preset"], r["mode"]): r for r in rows}
    for preset in args.presets:
        owner, copied = by[(preset, "owner")], by[(preset, "copied")]
        owner["saved_bytes_per_validation"] = (
            copied["written_bytes_median"] - (owner["written_bytes_median"])
        )
        owner["saved_s_per_validation"] = copied["total_s_median"] - owner["total_s_median"]
    benchlib.write_report(
        args.out,
        argv=argv,
        load_before=load_before,
        results=rows,
        settings={
            "presets": args.presets,
            "reps": args.reps,
            "pause_s": args.pause,
            "threads": 1,
        },
    )
    benchlib.print_table(
        rows,
        [
            ("preset", "preset", ""),
            ("mode", "mode", ""),
            ("checkpoint_bytes", "checkpoint B", ",.0f"),
            ("written_bytes_median", "written B", ",.0f"),
            ("save_s_median", "save s", ".3f"),
            ("report_s_median", "report s", ".3f"),
            ("total_s_median", "total s", ".3f"),
        ],
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
