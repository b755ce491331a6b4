"""Reading a sweep back from MLflow, and logging its report there.

This is the only module of the report that talks to MLflow (through
:class:`mlflow.MlflowClient`, never from local run folders, so a report can be made on
any machine that reaches the tracking server). mlflow is imported when a function here
runs, not with the module: ``sparling --help`` must stay fast.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from pipelines.report.records import ERRORS, CurvePoint, RunRecord, SweepCounts
from pipelines.report.stats import _run_key
from pipelines.tracking.metrics import (
    MOTIF_CE,
    MOTIF_FNE,
    MOTIF_FPE,
    SCHEDULE_DENSITY,
    VAL_E2EE,
    canonical_metrics,
    has_metric,
    names_of,
)

# The data contract with the sweep driver (pipelines/tracking/tags.py): every MLflow tag a
# report reads is imported here, so that no other part of the report reads a tag.
from pipelines.tracking.redaction import redact_uri
from pipelines.tracking.tags import (
    KIND_RUN,
    KIND_SUPERSEDED,
    KIND_SWEEP,
    STATUSES,
    TAG_DOMAIN,
    TAG_EXPECTED,
    TAG_FAILURE,
    TAG_KIND,
    TAG_METHOD,
    TAG_PARENT,
    TAG_RUN_ID,
    TAG_SEED,
    TAG_STATUS,
    TAG_SUPERSEDED_BY,
    TAG_SWEPT,
    TAG_SWEPT_FIELDS,
    is_superseded,
)
from pipelines.tracking.tags import TAG_SWEEP as TAG_SWEEP_NAME
from sparling.bottlenecks import BOTTLENECKS
from sparling.errors import SparlingError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run


def _client(tracking_uri: str) -> MlflowClient:
    """A client for ``tracking_uri``, refusing a local store that does not exist.

    MLflow would silently create an empty database or folder for a mistyped path, and
    the user would then be told that the experiment is missing instead of the store.
    """
    from mlflow import MlflowClient

    parsed = urlparse(tracking_uri)
    local: Path | None = None
    if parsed.scheme == "sqlite":
        path = tracking_uri[len("sqlite:///") :] if tracking_uri.startswith("sqlite:///") else ""
        if path and path != ":memory:":
            local = Path(unquote(path))
    elif parsed.scheme == "file":
        local = Path(unquote(parsed.path))
    elif parsed.scheme == "" and tracking_uri:
        local = Path(tracking_uri)
    if local is not None and not local.exists():
        raise SparlingError(
            f"no MLflow tracking store at {redact_uri(tracking_uri)!r} ({local} does not exist)"
        )
    return MlflowClient(tracking_uri=tracking_uri)


def _search_all(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    """Every active run matching ``filter_string`` (search_runs is paginated)."""
    runs: list[Run] = []
    token: str | None = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=filter_string, max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _experiment_id(client: MlflowClient, tracking_uri: str, experiment: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        exp = client.get_experiment_by_name(experiment)
        if exp is not None and exp.lifecycle_stage == "active":
            return str(exp.experiment_id)
        names = sorted(e.name for e in client.search_experiments())
    except MlflowException as e:
        raise SparlingError(
            f"could not read experiments from {redact_uri(tracking_uri)!r}: {e}"
        ) from e
    deleted = " (it was deleted)" if exp is not None else ""
    raise SparlingError(
        f"no experiment {experiment!r} at {redact_uri(tracking_uri)!r}{deleted}; experiments there: "
        f"{', '.join(map(repr, names)) or 'none'}"
    )


def _find_parent(
    client: MlflowClient, experiment_id: str, experiment: str, sweep_name: str, notes: list[str]
) -> Run:
    # Sweep names are compared here rather than in the filter string, so that any name
    # works (no quoting rules) and the error can list the sweeps that do exist.
    parents = _search_all(client, experiment_id, f"tags.`{TAG_KIND}` = '{KIND_SWEEP}'")
    matching = [p for p in parents if p.data.tags.get(TAG_SWEEP_NAME) == sweep_name]
    if not matching:
        found = sorted({p.data.tags.get(TAG_SWEEP_NAME, "?") for p in parents})
        raise SparlingError(
            f"no sweep {sweep_name!r} in experiment {experiment!r}; sweeps found: "
            f"{', '.join(map(repr, found)) or 'none'}"
        )
    # A sweep launched twice has two parent runs; the newest one is the sweep.
    matching.sort(key=lambda p: (p.info.start_time or 0, p.info.run_id), reverse=True)
    if len(matching) > 1:
        notes.append(
            f"{len(matching)} parent runs are named {sweep_name!r}; reporting the newest "
            f"({matching[0].info.run_id})."
        )
    return matching[0]


#: The validation curve's metric of each error (``ERRORS``), the motif errors at each
#: density step and the E2EE at each validation.
CURVE_METRICS = {"fpe": MOTIF_FPE, "fne": MOTIF_FNE, "ce": MOTIF_CE, "e2ee": VAL_E2EE}


def driven_by_ast(params: Mapping[str, str]) -> bool:
    """Whether AST set the density a run (its logged params) trained at: its bottleneck is
    an adaptive one and its schedule is on. Other runs (L1, Non-sparse, Retrained) log the
    schedule's density too, stepping as if it applied, which it does not."""
    name = params.get("bottleneck.name")
    if name not in BOTTLENECKS:
        return False
    return BOTTLENECKS[name].adaptive and params.get("schedule.enabled", "True") != "False"


def _history(client: MlflowClient, run: Run) -> tuple[CurvePoint, ...]:
    """The validation errors paired with the density trained at, logged at the same step;
    none for a run whose density AST did not set (:func:`driven_by_ast`).

    Each metric is read under its name and its old one (a run resumed across the rename
    has both, each for some steps; where both have a step, the new name wins)."""
    if not driven_by_ast(run.data.params):
        return ()
    logged = run.data.metrics
    errors_of = {m: CURVE_METRICS[m] for m in ERRORS if has_metric(logged, CURVE_METRICS[m])}
    if not errors_of or not has_metric(logged, SCHEDULE_DENSITY):
        return ()

    def by_step(name: str) -> dict[int, float]:
        merged: dict[int, float] = {}
        for key in reversed(names_of(name)):  # the old name first: the new one overrides
            if key not in logged:
                continue
            # A resumed run may log a step twice: the latest timestamp wins.
            out: dict[int, tuple[int, float]] = {}
            for m in client.get_metric_history(run.info.run_id, key):
                if m.step not in out or m.timestamp >= out[m.step][0]:
                    out[m.step] = (m.timestamp, m.value)
            merged.update({step: value for step, (_, value) in out.items()})
        return merged

    density = by_step(SCHEDULE_DENSITY)
    errors = {m: by_step(name) for m, name in errors_of.items()}
    steps = sorted({s for values in errors.values() for s in values} & set(density))
    return tuple(
        CurvePoint(
            density=density[s],
            means={m: values[s] for m, values in errors.items() if s in values},
            n=1,
        )
        for s in steps
    )


def _record(client: MlflowClient, run: Run, fields: Sequence[str], notes: list[str]) -> RunRecord:
    tags = run.data.tags
    name = tags.get(TAG_RUN_ID, run.info.run_id)

    seed: int | None = None
    try:
        seed = int(tags[TAG_SEED])
    except (KeyError, ValueError):
        notes.append(f"run {name}: no integer {TAG_SEED} tag ({tags.get(TAG_SEED)!r}).")

    swept: dict[str, Any] = {}
    raw = tags.get(TAG_SWEPT)
    if raw:
        try:
            loaded = json.loads(raw)
            if not isinstance(loaded, dict):
                raise ValueError("not a JSON object")
            swept = loaded
        except ValueError:
            notes.append(f"run {name}: unreadable {TAG_SWEPT} tag {raw!r}.")
    elif fields:
        notes.append(f"run {name}: no {TAG_SWEPT} tag.")

    status = tags.get(TAG_STATUS)
    if status is None:  # an older or crashed driver: fall back on MLflow's own status
        status = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "stopped"}.get(
            run.info.status, "running"
        )
    elif status not in STATUSES:
        notes.append(f"run {name}: unknown {TAG_STATUS} {status!r}, counted as running.")
        status = "running"
    if status == "running" and run.info.status == "KILLED":
        # told to stop (a deadline, SIGTERM, never started): resumable, not running
        status = "stopped"

    return RunRecord(
        mlflow_run_id=run.info.run_id,
        run_id=name,
        method=tags.get(TAG_METHOD, "?"),
        domain=tags.get(TAG_DOMAIN, "?"),
        seed=seed,
        # Only the parent's swept fields, in its order. A field a run does not vary (the
        # other fields of a one-at-a-time ``vary`` axis) has its config's value, read from
        # the run's params (the resolved config); without one it stays None.
        swept={f: swept[f] if f in swept else _param(run.data.params, f) for f in fields},
        status=status,
        failure=tags.get(TAG_FAILURE) or (None if status != "failed" else "(no reason logged)"),
        # under the current names, read from the old ones for runs tracked before them
        metrics=canonical_metrics(run.data.metrics),
        # Only finished runs enter the curves; skipping the others saves MLflow calls.
        history=_history(client, run) if status == "finished" else (),
        start_time=run.info.start_time or 0,
        params={k: _param(run.data.params, k) for k in run.data.params or {}},
        tags=dict(tags),
    )


def _param(params: dict[str, str] | None, key: str) -> Any:
    """A logged param as the value it was (params are JSON text, strings as they are)."""
    if not params or key not in params:
        return None
    try:
        return json.loads(params[key])
    except ValueError:
        return params[key]


def _deduplicate(records: list[RunRecord], notes: list[str]) -> list[RunRecord]:
    """One record per config hash: a retried run keeps its best, then newest, attempt."""
    rank = {"finished": 0, "running": 1, "stopped": 2, "failed": 3}
    by_id: dict[str, list[RunRecord]] = defaultdict(list)
    for r in records:
        by_id[r.run_id].append(r)
    kept = []
    for run_id, attempts in by_id.items():
        attempts.sort(key=lambda r: (rank[r.status], -r.start_time))
        kept.append(attempts[0])
        if len(attempts) > 1:
            notes.append(
                f"run {run_id}: {len(attempts)} attempts in MLflow; reporting the "
                f"{attempts[0].status} one ({attempts[0].mlflow_run_id})."
            )
    return kept


def _swept_fields(parent: Run, notes: list[str]) -> list[str]:
    raw = parent.data.tags.get(TAG_SWEPT_FIELDS, "[]")
    try:
        fields = json.loads(raw)
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            raise ValueError("not a JSON list of strings")
    except ValueError:
        notes.append(f"unreadable {TAG_SWEPT_FIELDS} tag on the parent run: {raw!r}.")
        return []
    return fields


def _current_runs(children: list[Run], notes: list[str]) -> list[Run]:
    """The children that stand for the sweep's runs: the report's one filter of
    superseded runs (:func:`~pipelines.tracking.tags.is_superseded`: runs of earlier
    configs of the sweep's runs, runs trained again; tagged either way a sweep has
    tagged them), each left out with a note of how many."""
    runs = [
        r for r in children if r.data.tags.get(TAG_KIND, KIND_RUN) in (KIND_RUN, KIND_SUPERSEDED)
    ]
    current = [r for r in runs if not is_superseded(r.data.tags)]
    aside = [r.data.tags for r in runs if is_superseded(r.data.tags)]
    if aside:
        earlier = sum(TAG_SUPERSEDED_BY in t for t in aside)
        notes.append(
            f"{len(aside)} superseded runs left out ({earlier} of earlier configs of this "
            f"sweep's runs, {len(aside) - earlier} trained again; tag {TAG_KIND}="
            f"{KIND_SUPERSEDED})."
        )
    return current


@dataclass(frozen=True)
class Sweep:
    """A sweep as read back from MLflow: its parent run, swept fields and runs (one per
    config, in report order), and how complete it is."""

    parent_run_id: str
    swept_fields: list[str]
    runs: list[RunRecord]
    counts: SweepCounts


def read_sweep(tracking_uri: str, experiment: str, sweep_name: str, notes: list[str]) -> Sweep:
    """Read the sweep ``sweep_name`` of ``experiment`` from the store at ``tracking_uri``.

    What the report should say about the runs read (unreadable tags, retried runs, the
    expected number of runs) is appended to ``notes``.

    Raises:
        SparlingError: the store, experiment or sweep does not exist (the message lists
            the experiments or sweeps that do).
    """
    client = _client(tracking_uri)
    experiment_id = _experiment_id(client, tracking_uri, experiment)
    parent = _find_parent(client, experiment_id, experiment, sweep_name, notes)
    fields = _swept_fields(parent, notes)

    children = _search_all(client, experiment_id, f"tags.`{TAG_PARENT}` = '{parent.info.run_id}'")
    current = _current_runs(children, notes)
    records = [_record(client, run, fields, notes) for run in current]
    runs = sorted(_deduplicate(records, notes), key=_run_key)

    raw_expected = parent.data.tags.get(TAG_EXPECTED)
    try:
        expected = int(raw_expected) if raw_expected is not None else len(runs)
    except ValueError:
        expected = len(runs)
        notes.append(f"unreadable {TAG_EXPECTED} tag {raw_expected!r}; using the runs found.")
    if raw_expected is None:
        notes.append(f"no {TAG_EXPECTED} tag on the parent run; missing runs cannot be counted.")
    if len(runs) > expected:
        notes.append(f"{len(runs)} runs found but the sweep expected {expected}.")
    status = Counter(r.status for r in runs)
    counts = SweepCounts(
        expected=expected,
        present=len(runs),
        finished=status["finished"],
        failed=status["failed"],
        running=status["running"],
        stopped=status["stopped"],
    )
    return Sweep(parent.info.run_id, fields, runs, counts)


def _forget_artifact_repo(run_id: str) -> None:
    """Drop MLflow's cached artifact repository of ``run_id``. MLflow caches one per run
    id for the whole process, whatever the tracking URI: a sweep that logged the parent's
    artifacts through its own local server, stopped since, would otherwise upload the
    report to that server's address (and retry for minutes) instead of the one given."""
    from mlflow.tracking._tracking_service import utils

    utils._artifact_repos_cache.pop(run_id, None)


def log_folder(tracking_uri: str, parent_run_id: str, out_dir: Path) -> None:
    """Log the files under ``out_dir`` as the ``report/`` artifacts of ``parent_run_id``.

    Raises:
        SparlingError: the store or the run does not exist.
    """
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        client.get_run(parent_run_id)
    except MlflowException as e:
        raise SparlingError(
            f"no MLflow run {parent_run_id!r} at {redact_uri(tracking_uri)!r}: {e}"
        ) from e
    _forget_artifact_repo(parent_run_id)
    client.log_artifacts(parent_run_id, str(out_dir), artifact_path="report")


def log_table_file(tracking_uri: str, run_id: str, frame: Any, artifact_file: str) -> None:
    """Log ``frame`` as the run's table ``artifact_file`` (``.json``), as
    ``MlflowClient.log_table`` does (the same file format, listed in the run's
    ``mlflow.loggedArtifacts`` tag, so the UI shows it and ``load_table`` reads it), but
    replacing an earlier table of that name where ``log_table`` would append to it (a
    report made again would double its rows)."""
    import tempfile

    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

    client = _client(tracking_uri)
    folder, name = artifact_file.rpartition("/")[::2]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        frame.to_json(path, orient="split", index=False, date_format="iso")
        _forget_artifact_repo(run_id)
        client.log_artifact(run_id, str(path), folder or None)
    logged = json.loads(client.get_run(run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
    entry = {"path": artifact_file, "type": "table"}
    if entry not in logged:
        client.set_tag(run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps([*logged, entry]))
