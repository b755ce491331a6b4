"""The MLflow tag contract: what the sweep driver writes on its runs and a report reads back.

A sweep logs one *parent* run per sweep and one *child* run per training run (nested
under it by ``mlflow.parentRunId``). The sync (:mod:`pipelines.sync`, through
:class:`~pipelines.tracking.finder.Tracker`) writes these tags; the report finds runs and
reads their results back by them. Every tag value is a string:

==========================  ===========  ==================================================
tag                         on           value
==========================  ===========  ==================================================
``sparling.kind``           both         ``sweep`` on a parent run, ``run`` on a child run
                                         (``superseded``: set aside, see below)
``sparling.superseded``     child        why it was set aside
``sparling.superseded_by``  child        the run id that replaces one of an earlier config
``sparling.sweep_name``     parent       the sweep's name
``sparling.expected_runs``  parent       how many runs the sweep has planned, e.g. ``12``:
                                         those of its latest start and those earlier
                                         starts planned (``--seeds``/``--methods``: a
                                         subset), less runs of earlier configs; set at
                                         every start
``sparling.swept_fields``   parent       JSON list of the swept config fields, in order
``sparling.sweep_file``     parent       the sweep file the sweep was read from
``sparling.run_id``         child        the run's config hash (``RunConfig.run_id()``)
``sparling.method``         child        bottleneck name, e.g. ``sparling``, ``sparling-st``
``sparling.domain``         child        e.g. ``digit-circle``
``sparling.seed``           child        the run seed, e.g. ``0``
``sparling.swept``          child        JSON object: swept field -> this run's value
``sparling.status``         child        ``running``, then ``finished`` or ``failed``
``sparling.failure``        child        why a ``failed`` run failed
``sparling.git_commit``     child        ``git rev-parse HEAD`` of the project, or ``unknown``
``sparling.git_dirty``      child        ``true`` when the work tree had uncommitted changes
``sparling.versions``       child        ``sparling=... torch=... ray=... mlflow=...``
``sparling.trained_in``     child        the run trained alone that it stands for
``sparling.sweep_runs``     alone        the sweep children standing for it, comma-separated
``mlflow.parentRunId``      child        the parent's run id (the MLflow UI nests it)
==========================  ===========  ==================================================

A run trained alone (``sparling train``, "alone" above) has a child's tags, without a
parent and with ``sparling.swept`` ``{}``: a sweep that plans the same config finds it by
``sparling.run_id``. In the sweep's experiment it becomes the sweep's child (nested under
the parent, the same MLflow run); in another experiment (runs cannot move) the sweep makes
a child that gets its metrics and is linked to it both ways (``sparling.trained_in``,
``sparling.sweep_runs``).

A run set aside is *superseded*: it keeps everything it logged, but no sweep, report or
``sparling train`` takes it for the run of its key any more. One scheme for both reasons
a run is set aside (:func:`superseded_tags`, read by :func:`is_superseded`):
``sparling.kind=superseded`` and the reason in ``sparling.superseded``; a sweep's child of
an earlier config (the same run name under another key: a changed preset or default)
also names the key that replaces it in ``sparling.superseded_by`` (and becomes a run
again should the config change back); a run trained again from scratch (``--rerun
changed``) does not (it is replaced by a new run of its own key). Records of the two
schemes before this one stay readable: runs trained again had this same form already,
and children of an earlier config kept ``sparling.kind=run`` with only
``sparling.superseded_by`` (a sweep's next start rewrites those of the names it plans).

A child without ``sparling.status`` (an older or crashed driver) is read by MLflow's own
run status. Experiments carry ``mlflow.experimentKind=custom_model_development`` and UI
links end in :data:`UI_QUERY`, so that the MLflow 3 UI shows the runs table rather than
its GenAI pages.

Child run names are ``"<method> seed=<seed>"`` (:func:`run_name`); a parent run is named
after its sweep.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: The project root (for ``git rev-parse``).
PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Tag keys.
TAG_KIND = "sparling.kind"
TAG_SWEEP = "sparling.sweep_name"
TAG_EXPECTED = "sparling.expected_runs"
TAG_SWEPT_FIELDS = "sparling.swept_fields"
TAG_SWEEP_FILE = "sparling.sweep_file"
TAG_SWEPT = "sparling.swept"
TAG_STATUS = "sparling.status"
TAG_FAILURE = "sparling.failure"
TAG_RUN_ID = "sparling.run_id"
#: on a superseded child of an earlier config of a planned run: the run id replacing it
TAG_SUPERSEDED_BY = "sparling.superseded_by"
TAG_METHOD = "sparling.method"
TAG_DOMAIN = "sparling.domain"
TAG_SEED = "sparling.seed"
TAG_COMMIT = "sparling.git_commit"
TAG_DIRTY = "sparling.git_dirty"
TAG_VERSIONS = "sparling.versions"
#: on a superseded run: why it was set aside
TAG_SUPERSEDED = "sparling.superseded"
TAG_TRAINED_IN = "sparling.trained_in"
TAG_SWEEP_RUNS = "sparling.sweep_runs"
TAG_PARENT = "mlflow.parentRunId"
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"

# Tag values.
#: ``sparling.kind`` of a sweep's parent run and of a training run's child run; of a run
#: set aside for one trained again (``sparling sweep --rerun changed``).
KIND_SWEEP = "sweep"
KIND_RUN = "run"
KIND_SUPERSEDED = "superseded"
#: What a run records of the code that trained it: kept as they are when a sweep takes
#: over or links a run trained alone, set again when a run resumes training.
TRAINING_TAGS = (TAG_COMMIT, TAG_DIRTY, TAG_VERSIONS, "mlflow.source.git.commit")
#: The files a run's result depends on (what ``--rerun changed`` compares): the library,
#: how runs are trained and evaluated, the datasets generated, the dependencies.
CODE_PATHS = (
    "sparling",
    "pipelines/train_job.py",
    "pipelines/executors",
    "pipelines/generate.py",
    "pyproject.toml",
)
#: ``sparling.status`` of a child run: set to running when created, then to one of the others.
STATUS_RUNNING = "running"
STATUS_FINISHED = "finished"
STATUS_FAILED = "failed"
STATUSES = (STATUS_FINISHED, STATUS_FAILED, STATUS_RUNNING)
#: ``mlflow.experimentKind`` of every experiment a sweep logs to.
EXPERIMENT_KIND = "custom_model_development"
#: Query to add to UI links: the MLflow 3 UI opens in its GenAI mode otherwise.
UI_QUERY = "workflowType=machine_learning"


def parent_tags(expected_runs: int, swept_fields: Sequence[str], sweep_file: str) -> dict[str, str]:
    """The tags the driver gives a sweep's parent run, besides ``sparling.kind`` and
    ``sparling.sweep_name`` (which :meth:`~pipelines.tracking.finder.Tracker.parent_run`
    sets and finds the run by)."""
    return {
        TAG_EXPECTED: str(expected_runs),
        TAG_SWEPT_FIELDS: json.dumps(swept_fields),
        TAG_SWEEP_FILE: sweep_file,
    }


def superseded_tags(reason: str, by: str | None = None) -> dict[str, str]:
    """The tags that set a run aside (superseded, see the module's docstring): ``reason``
    says why; ``by``: the run id that replaces it, for a run of an earlier config."""
    tags = {TAG_KIND: KIND_SUPERSEDED, TAG_SUPERSEDED: reason}
    if by is not None:
        tags[TAG_SUPERSEDED_BY] = by
    return tags


def is_superseded(tags: Mapping[str, str]) -> bool:
    """Whether a run's tags say it is superseded: ``sparling.kind=superseded``, or (as a
    child of an earlier config was tagged before) ``sparling.superseded_by`` alone."""
    return tags.get(TAG_KIND) == KIND_SUPERSEDED or TAG_SUPERSEDED_BY in tags


def child_tags(
    key: str, method: str, domain: str, seed: int, swept: Mapping[str, Any]
) -> dict[str, str]:
    """The tags the driver gives a training run's child run when it creates or resumes it
    (status ``running``); :func:`environment_tags` are added beside them."""
    return {
        TAG_KIND: KIND_RUN,
        TAG_RUN_ID: key,
        TAG_METHOD: method,
        TAG_DOMAIN: domain,
        TAG_SEED: str(seed),
        TAG_SWEPT: json.dumps(swept, sort_keys=True),
        TAG_STATUS: STATUS_RUNNING,
    }


def run_name(method: str, seed: int) -> str:
    """The display name of a child run: ``"sparling seed=0"``, ``"sparling-st seed=1"``."""
    return f"{method} seed={seed}"


def experiment_url(uri: str, experiment_id: str) -> str:
    """The UI page of an experiment's runs table (in the UI's model-training mode)."""
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs?{UI_QUERY}"


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def _git(root: Path, *args: str) -> str | None:
    """``git -C root ARGS``'s output, or ``None`` when it fails (no git, no checkout)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def git_commit(root: Path = PROJECT_ROOT) -> str:
    """``git rev-parse HEAD`` of the project, or ``unknown`` outside a git checkout."""
    return (_git(root, "rev-parse", "HEAD") or "").strip() or "unknown"


def code_changes(commit: str, root: Path = PROJECT_ROOT) -> list[str] | None:
    """The files of :data:`CODE_PATHS` that differ between ``commit`` and the code as it is
    now (the work tree: uncommitted changes count); ``None`` when that cannot be told (an
    unknown commit, one this checkout does not have, no git)."""
    if commit in ("", "unknown") or _git(root, "cat-file", "-e", f"{commit}^{{commit}}") is None:
        return None
    out = _git(root, "diff", "--name-only", commit, "--", *CODE_PATHS)
    return None if out is None else sorted(line for line in out.splitlines() if line)


def environment_tags(root: Path = PROJECT_ROOT, source: str | None = None) -> dict[str, str]:
    """``sparling.git_commit`` (``unknown`` outside a git checkout), ``sparling.git_dirty``
    and ``sparling.versions``: what a result was produced with; with MLflow's standard
    context tags (:func:`mlflow_context_tags`; ``source`` names the run's source)."""

    def git(*args: str) -> str | None:
        return _git(root, *args)

    commit = git_commit(root)
    tags = {TAG_COMMIT: commit}
    if commit != "unknown":
        status = git("status", "--porcelain", "--untracked-files=no")
        if status is not None:
            tags[TAG_DIRTY] = "true" if status.strip() else "false"
    versions = {d: _version(d) for d in ("sparling", "torch", "ray", "mlflow")}
    tags[TAG_VERSIONS] = " ".join(f"{k}={v}" for k, v in versions.items())
    return {**mlflow_context_tags(commit, source), **tags}


def mlflow_context_tags(commit: str, source: str | None = None) -> dict[str, str]:
    """MLflow's own context tags (the UI's User, Source and Version columns): what
    ``mlflow.tracking.context.registry.resolve_tags`` finds (user, source type, ...), with
    the source named as the command that made the run and the project's git commit."""
    import getpass
    import sys

    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils.mlflow_tags import (
        MLFLOW_GIT_COMMIT,
        MLFLOW_SOURCE_NAME,
        MLFLOW_SOURCE_TYPE,
        MLFLOW_USER,
    )

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (e.g. in a container)
        user = "unknown"
    name = source or " ".join(["sparling", *sys.argv[1:2]]).strip()
    tags = {str(k): str(v) for k, v in resolve_tags().items()}
    tags.update({MLFLOW_USER: user, MLFLOW_SOURCE_NAME: name, MLFLOW_SOURCE_TYPE: "LOCAL"})
    if commit != "unknown":
        tags[MLFLOW_GIT_COMMIT] = commit
    else:
        tags.pop(MLFLOW_GIT_COMMIT, None)
    return tags
