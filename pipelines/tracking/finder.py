"""The run API (:class:`Tracker`): experiments, one parent run per sweep and one child run
per training run, found again by their tags (never duplicated), stale runs marked KILLED.

The tags are those of :mod:`pipelines.tracking.tags`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.tracking.errors import TrackingError
from pipelines.tracking.limits import (
    METRICS_PER_BATCH,
    PARAMS_PER_BATCH,
    check_key,
    param_value,
    tag_value,
)
from pipelines.tracking.redaction import scrub
from pipelines.tracking.settings import EXPERIMENT_ENV
from pipelines.tracking.tags import (
    EXPERIMENT_KIND,
    KIND_RUN,
    KIND_SWEEP,
    TAG_EXPERIMENT_KIND,
    TAG_KIND,
    TAG_PARENT,
    TAG_RUN_ID,
    TAG_SUPERSEDED,
    TAG_SUPERSEDED_BY,
    TAG_SWEEP,
    TAG_SWEEP_RUNS,
    TAG_TRAINED_IN,
    TRAINING_TAGS,
    is_superseded,
    superseded_tags,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import DatasetInput, Run

_log = logging.getLogger(__name__)

_TERMINAL = ("FINISHED", "FAILED", "KILLED")


def _quote(value: str) -> str:
    """A string literal for an MLflow filter (which has no escapes inside quotes)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise TrackingError(f"a name may hold ' or \" but not both: {value!r}")


class Tracker:
    """Sweep and run bookkeeping on an MLflow tracking server (a thin layer on
    :class:`mlflow.MlflowClient`).

    Every ``find-or-create`` looks runs up by tags and, after creating one, looks again:
    if two processes created the same run at once, both keep the oldest and the other is
    deleted, so the store ends with one run per key.
    """

    def __init__(self, uri: str) -> None:
        from mlflow import MlflowClient

        self.uri = uri
        self.client: MlflowClient = MlflowClient(tracking_uri=uri)

    # -- experiments -------------------------------------------------------------------------
    def experiment(self, name: str, artifact_location: str | None = None) -> str:
        """The id of experiment ``name``, created (with ``artifact_location``) if missing.

        The experiment is tagged ``mlflow.experimentKind=custom_model_development``: the
        MLflow 3 UI then shows its runs table rather than the GenAI (traces) pages.
        """
        from mlflow.exceptions import MlflowException

        for _ in range(3):
            exp = self.client.get_experiment_by_name(name)
            if exp is not None:
                if exp.lifecycle_stage != "active":
                    raise TrackingError(
                        f"MLflow experiment {name!r} (id {exp.experiment_id}) is deleted: "
                        f"restore it (mlflow experiments restore --experiment-id "
                        f"{exp.experiment_id}) or choose another name ({EXPERIMENT_ENV})"
                    )
                if exp.tags.get(TAG_EXPERIMENT_KIND) is None:
                    self.client.set_experiment_tag(
                        exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND
                    )
                return str(exp.experiment_id)
            try:
                return str(
                    self.client.create_experiment(
                        name, artifact_location, tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND}
                    )
                )
            except MlflowException as e:
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                # another process created it between our look-up and create: look again
        raise TrackingError(f"could not get or create MLflow experiment {name!r}")

    # -- runs --------------------------------------------------------------------------------
    def _search(self, experiment_ids: list[str], filter_string: str) -> list[Run]:
        from mlflow.entities import ViewType

        runs: list[Run] = []
        token: str | None = None
        while True:
            page = self.client.search_runs(
                experiment_ids,
                filter_string,
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=1000,
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def experiment_ids(self) -> list[str]:
        """The ids of every active experiment."""
        ids: list[str] = []
        token: str | None = None
        while True:
            page = self.client.search_experiments(max_results=1000, page_token=token)
            ids += [str(e.experiment_id) for e in page]
            token = page.token
            if not token:
                return ids

    def _find_or_create(
        self, experiment_id: str, filter_string: str, create: Any, keep: Any = None
    ) -> tuple[Run, bool]:
        """The oldest run matching ``filter_string`` (and the predicate ``keep``), or the one
        ``create`` makes; ``(run, existed)``."""

        def search() -> list[Run]:
            runs = self._search([experiment_id], filter_string)
            return [r for r in runs if keep(r)] if keep is not None else runs

        found = search()
        if found:
            return _oldest(found), True
        mine: Run = create()
        found = search()
        winner = _oldest(found) if found else mine
        if winner.info.run_id != mine.info.run_id:
            # Lost a race with another process creating the same run: keep theirs.
            self.client.delete_run(mine.info.run_id)
            return winner, True
        return mine, False

    def parent_run(
        self, experiment_id: str, sweep_name: str, tags: Mapping[str, Any] | None = None
    ) -> str:
        """The id of the sweep's parent run (tags ``sparling.kind=sweep`` and
        ``sparling.sweep_name``), created if missing, named after the sweep."""
        filter_string = _parent_filter(sweep_name)
        all_tags = {**scrub(dict(tags or {})), TAG_KIND: KIND_SWEEP, TAG_SWEEP: sweep_name}

        def create() -> Run:
            return self.client.create_run(experiment_id, tags=_tags(all_tags), run_name=sweep_name)

        run, _ = self._find_or_create(experiment_id, filter_string, create)
        return str(run.info.run_id)

    def child_run(
        self,
        experiment_id: str,
        parent_id: str,
        key: str,
        name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, Any] | None = None,
    ) -> tuple[str, bool]:
        """``(run_id, existed)`` of the run ``key`` (tag ``sparling.run_id``) under the parent.

        A new run gets ``mlflow.parentRunId`` (the UI nests it), the name, the tags and the
        params (credential-like ones redacted, long values cut to MLflow's limit). For an
        existing run, only params it does not have yet are logged: MLflow params are
        immutable, and one whose value differs (e.g. ``data.root`` on another machine)
        is left as first logged, with a warning.
        """
        filter_string = (
            f"tags.`{TAG_PARENT}` = {_quote(parent_id)} and tags.`{TAG_RUN_ID}` = {_quote(key)} "
            f"and tags.`{TAG_KIND}` = '{KIND_RUN}'"
        )
        all_tags = {
            **scrub(dict(tags or {})),
            TAG_PARENT: parent_id,
            TAG_KIND: KIND_RUN,
            TAG_RUN_ID: key,
        }

        def create() -> Run:
            return self.client.create_run(experiment_id, tags=_tags(all_tags), run_name=name)

        def current(r: Run) -> bool:  # one tagged superseded the earlier way is not it
            return not is_superseded(r.data.tags)

        found = [r for r in self._search([experiment_id], filter_string) if current(r)]
        if not found:
            alone = self.standalone_runs(key)
            here = [r for r in alone if r.info.experiment_id == experiment_id]
            if here:
                # trained alone (``sparling train``) in this experiment: that run becomes
                # the sweep's child, nested under its parent
                run = _oldest(here)
                # what it recorded of the code that trained it is kept
                self.set_tags(run.info.run_id, {**all_tags, **_training_tags(run)})
                self.client.update_run(run.info.run_id, name=name)
                self._log_params(self.client.get_run(run.info.run_id), params)
                return str(run.info.run_id), True
            if alone:
                # trained alone in another experiment (runs cannot move): a new child,
                # linked both ways, with the metrics that run logged
                source = _oldest(alone)
                all_tags[TAG_TRAINED_IN] = source.info.run_id
                all_tags.update(_training_tags(source))  # the code that trained it
        run, existed = self._find_or_create(experiment_id, filter_string, create, current)
        self._log_params(run, params)
        linked = run.data.tags.get(TAG_TRAINED_IN) or all_tags.get(TAG_TRAINED_IN)
        if not existed and linked:
            self.copy_metrics(linked, run.info.run_id)
            self.link(linked, run.info.run_id)
        return str(run.info.run_id), existed

    def standalone_runs(self, key: str, experiment_ids: list[str] | None = None) -> list[Run]:
        """The runs of ``key`` logged outside any sweep (``sparling train``: tag
        ``sparling.run_id``, no parent) in the experiments (default: every one), oldest
        first."""
        ids = experiment_ids if experiment_ids is not None else self.experiment_ids()
        if not ids:
            return []
        filter_string = f"tags.`{TAG_RUN_ID}` = {_quote(key)} and tags.`{TAG_KIND}` = '{KIND_RUN}'"
        return [r for r in self._search(ids, filter_string) if TAG_PARENT not in r.data.tags]

    def runs_of(self, key: str) -> list[Run]:
        """Every active run of ``key`` (tag ``sparling.run_id``: sweep children and runs
        trained alone) in every experiment, oldest first."""
        ids = self.experiment_ids()
        if not ids:
            return []
        filter_string = f"tags.`{TAG_RUN_ID}` = {_quote(key)} and tags.`{TAG_KIND}` = '{KIND_RUN}'"
        return self._search(ids, filter_string)

    def standalone_run(
        self,
        experiment_id: str,
        key: str,
        name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, Any] | None = None,
    ) -> tuple[str, bool]:
        """``(run_id, existed)`` of the MLflow run of ``key`` in the experiment, for a run
        trained alone (``sparling train``): one found there (trained alone before, or a
        sweep's child: the run is the same) or a new one without a parent, tagged as a
        sweep would tag it, so that a sweep later finds it (:meth:`child_run`)."""
        filter_string = f"tags.`{TAG_RUN_ID}` = {_quote(key)} and tags.`{TAG_KIND}` = '{KIND_RUN}'"
        all_tags = {**scrub(dict(tags or {})), TAG_KIND: KIND_RUN, TAG_RUN_ID: key}

        def create() -> Run:
            return self.client.create_run(experiment_id, tags=_tags(all_tags), run_name=name)

        run, existed = self._find_or_create(experiment_id, filter_string, create)
        self._log_params(run, params)
        return str(run.info.run_id), existed

    def copy_metrics(self, source: str, target: str) -> int:
        """Every point of every metric of run ``source`` into run ``target`` (steps and
        timestamps kept); returns how many."""
        from mlflow.entities import Metric

        points: list[Metric] = []
        for key in self.client.get_run(source).data.metrics:
            points += [
                Metric(m.key, m.value, m.timestamp, m.step)
                for m in self.client.get_metric_history(source, key)
            ]
        for i in range(0, len(points), METRICS_PER_BATCH):
            self.client.log_batch(target, metrics=points[i : i + METRICS_PER_BATCH])
        return len(points)

    def link(self, trained: str, child: str) -> None:
        """Record that sweep child ``child`` stands for run ``trained`` (trained alone in
        another experiment): ``sparling.trained_in`` on the child, ``sparling.sweep_runs``
        (the children, comma-separated) on the other."""
        have = self.client.get_run(trained).data.tags.get(TAG_SWEEP_RUNS, "")
        children = [c for c in have.split(",") if c]
        if child not in children:
            self.set_tags(trained, {TAG_SWEEP_RUNS: ",".join([*children, child])})
        self.set_tags(child, {TAG_TRAINED_IN: trained})

    def _log_params(self, run: Run, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        have = dict(run.data.params) if run.data.params else {}
        todo: list[Param] = []
        for k, v in scrub(dict(params)).items():
            value = param_value(v)
            if k in have:
                if have[k] != value:
                    _log.warning(
                        "run %s: param %s already logged as %r, not changed to %r",
                        run.info.run_id,
                        k,
                        have[k][:80],
                        value[:80],
                    )
                continue
            todo.append(Param(check_key(k), value))
        for i in range(0, len(todo), PARAMS_PER_BATCH):
            self.client.log_batch(run.info.run_id, params=todo[i : i + PARAMS_PER_BATCH])

    def set_terminated(self, run_id: str, status: str = "FINISHED") -> None:
        """End a run as ``FINISHED``, ``FAILED`` or ``KILLED``."""
        if status not in _TERMINAL:
            raise TrackingError(f"status must be one of {', '.join(_TERMINAL)}, got {status!r}")
        self.client.set_terminated(run_id, status)

    def set_status(self, run_id: str, status: str) -> None:
        """Set a run's status: ``RUNNING`` (e.g. a resumed run that was marked KILLED or
        FAILED) or a terminal one (then as :meth:`set_terminated`, with an end time)."""
        if status in _TERMINAL:
            self.set_terminated(run_id, status)
        elif status in ("RUNNING", "SCHEDULED"):
            self.client.update_run(run_id, status=status)
        else:
            raise TrackingError(
                f"status must be RUNNING, SCHEDULED or one of {', '.join(_TERMINAL)}, "
                f"got {status!r}"
            )

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set tags on a run (credential-like ones redacted, long values cut)."""
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in _tags(scrub(dict(tags))).items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            self.client.log_batch(run_id, tags=items[i : i + PARAMS_PER_BATCH])

    def delete_tag(self, run_id: str, key: str) -> None:
        """Remove the tag ``key`` from a run; a run without it is left as it is."""
        if key in self.client.get_run(run_id).data.tags:
            self.client.delete_tag(run_id, key)

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log final metrics from the driver in one batch (workers use :class:`MetricLogger`)."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(check_key(k), float(v), ts, int(step)) for k, v in metrics.items()]
        for i in range(0, len(items), METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=items[i : i + METRICS_PER_BATCH])

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
        """Upload a folder's files into the run (through the server's artifact proxy)."""
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_artifact(self, run_id: str, local_file: Path, artifact_path: str | None = None) -> None:
        """Upload one file into the run."""
        self.client.log_artifact(run_id, str(local_file), artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """Write ``text`` into the run as the artifact ``artifact_file`` (e.g. ``a/b.json``)."""
        self.client.log_text(run_id, text, artifact_file)

    def log_inputs(self, run_id: str, datasets: Sequence[DatasetInput]) -> None:
        """Log dataset inputs to the run (those it has already are kept, not doubled)."""
        self.client.log_inputs(run_id, datasets=list(datasets))

    def children(self, parent_id: str) -> list[Run]:
        """The parent's active child runs, oldest first."""
        experiment_id = self.client.get_run(parent_id).info.experiment_id
        return self._search([experiment_id], f"tags.`{TAG_PARENT}` = {_quote(parent_id)}")

    def current_children(self, parent_id: str) -> list[Run]:
        """The parent's children that stand for its runs (``sparling.kind=run``), none
        superseded (:func:`~pipelines.tracking.tags.is_superseded`); oldest first."""
        return [
            r
            for r in self.children(parent_id)
            if r.data.tags.get(TAG_KIND, KIND_RUN) == KIND_RUN and not is_superseded(r.data.tags)
        ]

    def find_child(self, parent_id: str, key: str) -> Run | None:
        """The child run with ``sparling.run_id == key`` under the parent, if any (not a
        superseded one)."""
        runs = [r for r in self.current_children(parent_id) if r.data.tags.get(TAG_RUN_ID) == key]
        return _oldest(runs) if runs else None

    def supersede(self, key: str, reason: str) -> list[str]:
        """Set aside every MLflow run of ``key`` (:meth:`runs_of`) for one trained again:
        superseded (:func:`~pipelines.tracking.tags.superseded_tags`, with ``reason``: no
        sweep, report or ``sparling train`` finds it as the run any more; it keeps
        everything it logged). Returns their ids."""
        runs = [r.info.run_id for r in self.runs_of(key)]
        for run_id in runs:
            self.set_tags(run_id, superseded_tags(reason))
        return runs

    def mark_stale(self, parent_id: str, keep: Collection[str]) -> list[str]:
        """Mark KILLED the children still RUNNING whose key is not in ``keep`` (left behind
        by a driver that was killed); returns their keys, sorted."""
        stale = []
        for run in self.children(parent_id):
            key = run.data.tags.get(TAG_RUN_ID, "")
            if run.info.status == "RUNNING" and key not in keep:
                self.client.set_terminated(run.info.run_id, "KILLED")
                stale.append(key)
        return sorted(stale)

    def mark_superseded(self, parent_id: str, planned: Mapping[str, str]) -> list[str]:
        """Supersede the children that an earlier config of a planned run left behind:
        the same run name (``planned`` maps each planned run's name to its key) under
        another key (a changed preset or default gives every run a new id), tagged with
        the key that replaces them (:func:`~pipelines.tracking.tags.superseded_tags`).
        They stay in MLflow, ended KILLED if still RUNNING; reports leave them out. A
        planned child set aside this way becomes a run again (a config changed back);
        one trained again (:meth:`supersede`) stays aside. Children of names not planned
        now (a sweep run with ``--seeds`` or ``--methods``) are left alone. Children
        tagged the earlier way (``sparling.superseded_by`` on a ``run``) are rewritten.
        Returns the keys of the children of earlier configs, sorted."""
        superseded = []
        for run in self.children(parent_id):
            tags = run.data.tags
            key = tags.get(TAG_RUN_ID, "")
            name = run.info.run_name
            if name not in planned or (is_superseded(tags) and TAG_SUPERSEDED_BY not in tags):
                continue  # not planned now, or set aside as trained again
            if key == planned[name]:
                if TAG_SUPERSEDED_BY in tags:  # the config changed back
                    self.set_tags(run.info.run_id, {TAG_KIND: KIND_RUN})
                    for tag in (TAG_SUPERSEDED_BY, TAG_SUPERSEDED):
                        if tag in tags:
                            self.client.delete_tag(run.info.run_id, tag)
                continue
            aside = superseded_tags(
                f"an earlier config of run {name!r}, now run {planned[name]}", planned[name]
            )
            if any(tags.get(k) != v for k, v in aside.items()):
                self.set_tags(run.info.run_id, aside)
            if run.info.status == "RUNNING":
                self.client.set_terminated(run.info.run_id, "KILLED")
            superseded.append(key)
        return sorted(superseded)

    def find_parent(self, experiment_name: str, sweep_name: str) -> Run | None:
        """The parent run of a sweep in an experiment, if both exist."""
        exp = self.client.get_experiment_by_name(experiment_name)
        if exp is None:
            return None
        runs = self._search([exp.experiment_id], _parent_filter(sweep_name))
        return _oldest(runs) if runs else None


def _parent_filter(sweep_name: str) -> str:
    """The MLflow filter that finds a sweep's parent run."""
    return f"tags.`{TAG_KIND}` = '{KIND_SWEEP}' and tags.`{TAG_SWEEP}` = {_quote(sweep_name)}"


def _tags(tags: Mapping[str, Any]) -> dict[str, str]:
    return {check_key(k): tag_value(v) for k, v in tags.items()}


def _training_tags(run: Run) -> dict[str, str]:
    """What ``run`` recorded of the code that trained it (:data:`TRAINING_TAGS`)."""
    return {k: v for k, v in run.data.tags.items() if k in TRAINING_TAGS}


def _oldest(runs: list[Run]) -> Run:
    return min(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))
