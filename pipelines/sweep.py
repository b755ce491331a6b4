"""Running a sweep: plan -> executor -> run folders -> sync to MLflow (-> report).

:func:`run_sweep` takes a planned sweep (:mod:`pipelines.plan`), leaves out the runs whose
run folder (:mod:`sparling.runs`) says they are finished, opens the sweep's MLflow parent
and children (:mod:`pipelines.sync`) and hands the rest to an executor
(:mod:`pipelines.executors`: ``ray`` or ``local``). ``sparling sweep`` then prints the
report (:mod:`pipelines.report`).

``run_sweep`` is idempotent and resumable, keyed by each run's config hash:

- a run whose ``result.json`` exists and whose MLflow child is finished is skipped;
- an unfinished one resumes from its last checkpoint (the training loop does that);
- MLflow children are found by key, never duplicated; children a killed driver left
  "running" are marked KILLED first, then resumed;
- adding seeds or values to a sweep file runs only the new runs.

A failed run does not stop the others.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.executors import make_executor
from pipelines.executors.base import RunOutcome
from pipelines.executors.local import LocalOptions
from pipelines.plan import PlannedRun, Sweep
from pipelines.sync import tracking_context
from sparling.errors import SparlingError
from sparling.runs import RunFolder, ShorterBudgetRuns

if TYPE_CHECKING:
    from pipelines.tracking.settings import TrackingSettings

_log = logging.getLogger(__name__)


@dataclass
class SweepSummary:
    sweep: str
    outcomes: list[RunOutcome]
    wall_seconds: float
    parent_run_id: str | None = None

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def table(self) -> str:
        width = max((len(o.name) for o in self.outcomes), default=4)
        lines = [f"sweep {self.sweep}: {self.counts()} in {self.wall_seconds:.0f} s"]
        for o in self.outcomes:
            extra = f"  {o.reason}" if o.reason else ""
            lines.append(f"  {o.key}  {o.name:<{width}}  {o.status}{extra}")
        return "\n".join(lines)

    def counts(self) -> str:
        c: dict[str, int] = {}
        for o in self.outcomes:
            c[o.status] = c.get(o.status, 0) + 1
        return ", ".join(f"{n} {s}" for s, n in sorted(c.items()))


def check_runs_can_start(
    runs: list[PlannedRun], executor: str = "ray", work_dir: Path | None = None
) -> None:
    """What the runs check before their first step, once per distinct domain: its domain
    made for each split (a recordings folder found, the held-out speakers in it); and with
    the Ray executor, that a ``RAY_ADDRESS`` answers, and on its own local Ray instance
    that this machine has the GPUs each run asks for (``compute.gpus_per_worker``; Ray would keep such a run waiting forever).
    With ``work_dir``, the dataset folders the runs would make (no file in their way).
    Raises the first error, naming the run; writes nothing. The dry run calls it too, so
    it refuses what the real run would."""
    from sparling.datasets import check_datasets, check_domain

    seen: set[str] = set()
    seen_data: set[str] = set()
    for run in runs:
        key = run.config.domain.model_dump_json()
        if key not in seen:
            seen.add(key)
            check_domain(run.config)
        data_key = key + run.config.data.model_dump_json()
        if work_dir is not None and data_key not in seen_data:
            seen_data.add(data_key)
            check_datasets(run.config, work_dir)
    if executor != "ray" or not runs:
        return
    from pipelines.ray_env import (
        check_ray_address,
        refuse_unavailable_cpus,
        refuse_unavailable_gpus,
    )

    check_ray_address()  # a RAY_ADDRESS where nothing answers: said now, not in minutes

    shapes: dict[tuple[float, float, int], list[PlannedRun]] = {}
    for run in runs:
        c = run.config.compute
        shapes.setdefault((c.gpus_per_worker, c.cpus_per_worker, c.workers), []).append(run)
    for (gpus, cpus, workers), asking in shapes.items():
        try:
            refuse_unavailable_gpus(gpus, workers)
            refuse_unavailable_cpus(cpus, workers)
        except SparlingError as e:
            first = asking[0]
            others = f" and {len(asking) - 1} other run(s) like it" if len(asking) > 1 else ""
            raise SparlingError(
                f"run {first.name} ({first.key}){others}: {e}; nothing was started"
            ) from None


def gpu_note(runs: list[PlannedRun], executor: str, device: str | None = None) -> str | None:
    """What to know about the runs that ask for GPUs (``compute.gpus_per_worker``), for
    the dry run and the sweep's first lines: on a cluster (``RAY_ADDRESS``) they wait for
    GPU nodes; with ``--executor local`` they train on ``device``. ``None``: nothing to
    say (no run asks for a GPU, or the local Ray instance has them)."""
    asking = [r for r in runs if r.config.compute.gpus_per_worker > 0]
    if not asking:
        return None
    most = max(r.config.compute.gpus_per_worker * r.config.compute.workers for r in asking)
    if executor == "local":
        where = device or "cpu"
        return (
            f"{len(asking)} run(s) ask for GPUs (compute.gpus_per_worker); --executor local "
            f"trains every run on --device {where} and reserves nothing"
        )
    from pipelines.ray_env import on_cluster

    if on_cluster():
        return (
            f"{len(asking)} run(s) ask for GPUs (compute.gpus_per_worker, up to {most:g} per "
            "run): on the cluster at RAY_ADDRESS they wait for nodes with free GPUs, which "
            "its autoscaler adds where it may; a cluster that never has them keeps them "
            "waiting"
        )
    return None


#: ``--rerun`` values: which finished runs to train again.
RERUN_KINDS = {"changed": "the finished runs whose code changed since they finished"}
#: Where a run's folder goes when it is trained again (nothing of it is deleted).
SUPERSEDED_DIR = "superseded"


def changed_code(settings: Any, keys: Collection[str]) -> dict[str, str]:
    """Of the runs ``keys`` (finished), those trained by code that has changed since: run
    key -> how (the files of :data:`~pipelines.tracking.tags.CODE_PATHS` that differ
    between the commit their MLflow runs record and the code of now). Empty where nothing
    is tracked yet, or this is no git checkout (nothing to compare with)."""
    from pipelines.sync import trained_commits
    from pipelines.tracking.finder import Tracker
    from pipelines.tracking.server import tracking_uri
    from pipelines.tracking.settings import missing_local_store
    from pipelines.tracking.tags import code_changes, git_commit

    if not keys or missing_local_store(settings) is not None or git_commit() == "unknown":
        return {}
    with tracking_uri(settings) as uri:
        commits = trained_commits(Tracker(uri), keys)
    out: dict[str, str] = {}
    for key, commit in commits.items():
        files = code_changes(commit)
        if files is None:
            out[key] = f"trained at commit {commit[:12]}, which this checkout does not have"
        elif files:
            more = f" and {len(files) - 3} more" if len(files) > 3 else ""
            out[key] = f"since commit {commit[:12]}: {', '.join(files[:3])}{more}"
    return out


def set_aside(folder: RunFolder, why: str) -> Path:
    """Move a run folder out of the way of the run trained again in its place, to
    ``<work_dir>/superseded/<run id>-<n>/`` (with ``superseded.txt`` saying why);
    returns where."""
    import os

    root = folder.work_dir / SUPERSEDED_DIR
    root.mkdir(parents=True, exist_ok=True)
    n = 1
    while (root / f"{folder.run_id}-{n}").exists():
        n += 1
    target = root / f"{folder.run_id}-{n}"
    os.replace(folder.path, target)
    (target / "superseded.txt").write_text(why + "\n")
    return target


def run_is_finished(config: Any, work_dir: Path) -> bool:
    folder = RunFolder.for_config(config, work_dir)
    return bool(folder.read_result()) and folder.evaluation_path.is_file()


def trained_unevaluated(sweep: Sweep, done: Collection[str], work_dir: Path) -> set[str]:
    """The sweep's runs not done that finished training but have no test evaluation (it
    was deleted, to score them again, or cut off): running them only evaluates them."""
    return {
        r.key
        for r in sweep.runs
        if r.key not in done and RunFolder.for_config(r.config, work_dir).read_result()
    }


def continuations(sweep: Sweep, done: Collection[str], work_dir: Path) -> dict[str, str]:
    """The sweep's runs to train that will start from a shorter-budget run's checkpoint
    (:class:`sparling.runs.ShorterBudgetRuns`): key -> ``"continuing <run id> from sample
    N"``, or ``"taking <run id>'s result (...)"`` when that run ended by itself."""
    out: dict[str, str] = {}
    indexes: dict[Path, ShorterBudgetRuns] = {}  # one scan per runs folder, not per run
    for r in sweep.runs:
        if r.key in done:
            continue
        folder = RunFolder.for_config(r.config, work_dir)
        runs = folder.path.parent
        if runs not in indexes:
            indexes[runs] = ShorterBudgetRuns(runs)
        found = indexes[runs].source_for(folder, r.config)
        if found is not None and found.ended is not None:
            out[r.key] = f"taking {found.source.run_id}'s result ({found.ended} at {found.samples})"
        elif found is not None:
            out[r.key] = f"continuing {found.source.run_id} from sample {found.samples}"
    return out


def run_sweep(
    sweep: Sweep,
    work_dir: Path = Path("sparling-work"),
    *,
    progress: bool = True,
    track: bool = True,
    executor: str = "ray",
    local: LocalOptions | None = None,
    settings: TrackingSettings | None = None,
    rerun: Mapping[str, str] | None = None,
) -> SweepSummary:
    """Run every run of ``sweep`` that is not finished yet; returns the outcome of each.

    ``executor``: ``ray`` (one Ray Train job per run, on the local instance or the cluster
    ``RAY_ADDRESS`` names) or ``local`` (processes on this machine, no Ray; ``local``
    says how many at once, with how many threads, on which device, until when).
    ``settings``: where to track (default: the work dir's tracking settings). ``rerun``:
    run key -> why, for finished runs to train again from scratch: each one's folder is
    set aside (:func:`set_aside`) and its MLflow runs superseded."""
    runner = make_executor(executor, local)
    t0 = time.monotonic()
    work_dir = Path(work_dir).resolve()
    planned = {r.key: r for r in sweep.runs}
    for key, why in (rerun or {}).items():
        folder = RunFolder.for_config(planned[key].config, work_dir)
        if folder.path.exists():
            _log.info(
                "run %s: trained again (%s); its folder kept in %s",
                key,
                why,
                set_aside(folder, why),
            )
    todo: list[PlannedRun] = []
    outcomes: dict[str, RunOutcome] = {}
    for run in sweep.runs:
        if run_is_finished(run.config, work_dir):
            outcomes[run.key] = RunOutcome(run.key, run.name, "skipped", "already finished")
        else:
            todo.append(run)

    check_runs_can_start(todo, executor, work_dir)  # before anything is made or started
    runner.prepare(todo, work_dir, progress=progress)
    with contextlib.ExitStack() as stack:
        tracking: dict[str, Any] | None = None
        parent: str | None = None
        if track:
            tracking, parent = stack.enter_context(
                tracking_context(sweep, work_dir, todo, outcomes, settings, rerun)
            )
        if todo:
            runner.execute(todo, work_dir, tracking, outcomes, progress=progress)
    ordered = [outcomes[r.key] for r in sweep.runs]
    return SweepSummary(sweep.name, ordered, time.monotonic() - t0, parent)
