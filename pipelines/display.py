"""Live progress of a sweep on the terminal, read from each run's ``progress.json``.

- :class:`SweepDisplay` (the Ray executor): one bar for the sweep (runs done, running,
  failed, stopped) and one per running run (its samples, density and last validation accuracy);
- :func:`describe_progress` (the local executor): one run's state in its progress line.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparling.runs import RunFolder

if TYPE_CHECKING:
    from pipelines.executors.base import RunOutcome
    from pipelines.plan import PlannedRun


class SweepDisplay:
    """Live progress: one bar for the sweep (runs done, running, failed, stopped) and one
    per running run (its samples, density and last validation accuracy); each run that
    ends gets a line (``stopped: <run> stopped on SIGTERM at sample N; resumes ...``)."""

    def __init__(self, todo: list[PlannedRun], work_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.time()
        self.todo = {r.key: r for r in todo}
        self.work_dir = work_dir
        self.done = 0
        self.failed = 0
        self.stopped = 0
        self.bars: dict[str, Any] = {}
        self.overall: Any = None
        if enabled:
            from tqdm import tqdm

            self.overall = tqdm(total=len(todo), unit="run", desc="sweep", position=0)

    def _progress(self, run: PlannedRun) -> dict[str, Any] | None:
        folder = RunFolder.for_config(run.config, self.work_dir)
        try:
            if folder.progress_path.stat().st_mtime < self.started:
                return None  # left by an earlier, interrupted sweep: not running now
        except FileNotFoundError:
            return None
        return folder.read_progress()

    def refresh(
        self,
        started: int | None = None,
        waiting: int = 0,
        cluster: Mapping[str, float] | None = None,
    ) -> None:
        """Redraw the bars. ``started``: runs the executor has started (those not training
        yet are shown as ``starting``), ``waiting``: runs not started yet, ``cluster``: the
        cluster's resources now (``ray.cluster_resources()``, which grows and shrinks on an
        autoscaling cluster), of which the CPUs and GPUs are shown."""
        if not self.enabled:
            return
        from tqdm import tqdm

        running = 0
        for key, run in self.todo.items():
            info = self._progress(run)
            if not info or "samples" not in info:
                continue
            running += 1
            bar = self.bars.get(key)
            if bar is None:
                bar = self.bars[key] = tqdm(
                    total=run.config.budget_samples,
                    unit="sample",
                    desc=f"  {run.name}"[:40],
                    position=len(self.bars) + 1,
                    leave=False,
                )
            bar.n = min(int(info["samples"]), run.config.budget_samples)
            acc = info.get("val_accuracy")
            bar.set_postfix(
                density=f"{info.get('density', float('nan')):.2e}",
                acc="-" if acc is None else f"{acc:.3f}",
                refresh=False,
            )
            bar.refresh()
        size = {k: cluster[k] for k in ("CPU", "GPU") if cluster and cluster.get(k)}
        starting = {} if started is None else {"starting": max(0, started - running)}
        self.overall.set_postfix(
            running=running,
            **starting,
            waiting=waiting,
            failed=self.failed,
            **({"stopped": self.stopped} if self.stopped else {}),
            **({"cluster": " ".join(f"{v:g} {k}" for k, v in size.items())} if size else {}),
            refresh=False,
        )
        self.overall.refresh()

    def finished(self, run: PlannedRun, outcome: RunOutcome) -> None:
        self.done += 1
        self.failed += outcome.status == "failed"
        self.stopped += outcome.status == "stopped"
        self.todo.pop(run.key, None)
        bar = self.bars.pop(run.key, None)
        if bar is not None:
            bar.close()
        if self.overall is not None:
            self.overall.update(1)
            self.overall.write(f"{outcome.status}: {run.name} {outcome.reason}".rstrip())

    def say(self, text: str) -> None:
        """A line above the bars (on stderr when the display is off)."""
        if self.overall is not None:
            self.overall.write(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        if self.overall is not None:
            self.overall.close()


def describe_progress(name: str, info: dict[str, Any]) -> str:
    """One run's state for the progress line: samples, density, last validation accuracy
    and the accuracy bar, from its ``progress.json``. A run whose bottleneck AST does not
    drive (``adaptive`` false: L1, KL, non-sparse) shows the density its last validation
    measured, and no bar: neither the schedule's density nor its bar applies to it."""
    if "samples" not in info:
        return f"{name} starting"
    text = f"{name} @{int(info['samples'])}"
    adaptive = info.get("adaptive", True)
    if adaptive and "density" in info:
        text += f" density {info['density']:.2e}"
    elif not adaptive and "val_density" in info:
        text += f" measured density {info['val_density']:.2e}"
    if "val_accuracy" in info:
        text += f" acc {info['val_accuracy']:.3f}"
    if adaptive and "threshold" in info:
        text += f" bar {info['threshold']:.3f}"
    return text
