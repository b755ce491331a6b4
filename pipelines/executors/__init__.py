"""Executors: how a sweep's planned runs are started, chosen by name.

- ``ray`` (:mod:`pipelines.executors.ray_executor`, the default): one Ray Train job per
  run, on the local Ray or the cluster ``RAY_ADDRESS`` names;
- ``local`` (:mod:`pipelines.executors.local`): processes on this machine, no Ray
  (:class:`~pipelines.executors.local.LocalOptions`: how many at once, threads, device,
  deadline).

Either trains each run into its run folder (:mod:`sparling.runs`), evaluates it there
(:func:`~pipelines.executors.base.evaluate_run`) and, when the sweep is tracked, logs it
into the MLflow child :mod:`pipelines.sync` made for it. :func:`pipelines.sweep.run_sweep`
sees only the :class:`Executor` interface below.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from pipelines.executors.base import RunOutcome
from pipelines.executors.local import LocalExecutor, LocalOptions
from pipelines.executors.ray_executor import RayExecutor
from pipelines.plan import PlannedRun

#: the executors' names (``sparling sweep --executor``)
EXECUTORS = ("ray", "local")


class Executor(Protocol):
    """What :func:`pipelines.sweep.run_sweep` needs of an executor."""

    def prepare(self, todo: Sequence[PlannedRun], work_dir: Path, *, progress: bool) -> None:
        """What the runs need before tracking starts (the Ray executor: their datasets)."""

    def execute(
        self,
        todo: list[PlannedRun],
        work_dir: Path,
        tracking: dict[str, Any] | None,
        outcomes: dict[str, RunOutcome],
        *,
        progress: bool,
    ) -> None:
        """Train, evaluate and (with ``tracking``: ``{"uri", "runs": {key: child id}}``)
        log each run of ``todo``; its outcome goes into ``outcomes``, which holds the
        sweep's runs skipped as already finished. Never raises for a run that fails."""


def make_executor(name: str, local: LocalOptions | None = None) -> Executor:
    """The executor called ``name``; ``local`` configures the local one."""
    if name == "ray":
        return RayExecutor()
    if name == "local":
        return LocalExecutor(local or LocalOptions())
    raise ValueError(f"unknown executor {name!r}; accepted: {', '.join(EXECUTORS)}")
