"""The run folder: where one training run keeps everything it writes.

A run lives in ``<work_dir>/runs/<run id>/`` (the id is its config's hash,
:meth:`~sparling.config.RunConfig.run_id`)::

    config.json             the resolved run config
    checkpoints/last/       the latest checkpoint: what a stopped run resumes from
    checkpoints/density-*/  the model as it reached the accuracy bar at that density
    progress.json           the latest progress record (for live displays)
    history.json            every validation record so far
    result.json             how the run ended
    metrics.spool.jsonl     metric points not yet accepted by a tracking server
    train.lock              held by the process training the run
    evaluation.json         test scores (with the figures in ``evaluation/``)
    failure.txt             why the last attempt failed (the local executor's)
    stop-request.json       asks the run's Ray Train workers to checkpoint and stop

:class:`RunFolder` names these paths, lists and chooses the checkpoints, and reads and
writes the JSON records; :func:`build_run_model` builds the model a run's config
describes (with ``init_from`` resolved against the run folders beside it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import domains
from .checkpoint import (
    CONFIG_FILE,
    META_FILE,
    STATE_FILE,
    CheckpointError,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from .config import RUN_REF_PREFIX, RunConfig, load_config, parse_run_ref
from .domains.base import canonical_hash
from .errors import SparlingError, TrainingFailed
from .fileio import atomic_write_text
from .models import SparlingModel, build_model

if TYPE_CHECKING:
    from .domains import Domain
    from .train import RunResult

#: the work dir's folder of run folders
RUNS_DIR = "runs"
CHECKPOINTS_DIR = "checkpoints"
#: the checkpoint a run resumes from
LAST = "last"
DENSITY_PREFIX = "density-"
RESULT_FILE = "result.json"
PROGRESS_FILE = "progress.json"
HISTORY_FILE = "history.json"
SPOOL_FILE = "metrics.spool.jsonl"
LOCK_FILE = "train.lock"
EVALUATION_FILE = "evaluation.json"
EVALUATION_DIR = "evaluation"
FAILURE_FILE = "failure.txt"
STOP_REQUEST_FILE = "stop-request.json"
__all__ = [
    "CONFIG_FILE",
    "Continuation",
    "RunFolder",
    "ShorterBudgetRuns",
    "build_run_model",
    "continue_from_shorter_budget",
    "density_checkpoint_name",
    "density_key",
    "init_from_density",
    "read_json",
    "resolve_init_from",
    "select_checkpoint",
    "shorter_budget_source",
]


def density_key(density: float) -> str:
    """How a density is written in checkpoint names and ``result.json``: ``5.000000e-01``."""
    return f"{density:.6e}"


def density_checkpoint_name(density: float) -> str:
    """The name of the checkpoint kept when the run reached the accuracy bar at ``density``."""
    return f"{DENSITY_PREFIX}{density_key(density)}"


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` when the file is missing or not (yet) JSON."""
    try:
        data: dict[str, Any] = json.loads(Path(path).read_text())
        return data
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class RunRecordError(SparlingError):
    """A run's record (``result.json``, ``evaluation.json``) that cannot be read: the
    message names the file, what is wrong, and what to do."""


def read_record(path: Path, what: str, redo: str) -> dict[str, Any] | None:
    """The JSON object of a record a run writes once, whole (an atomic write): ``None``
    when the file is missing; :class:`RunRecordError` naming ``path`` when it is not UTF-8,
    not JSON or not an object (a damaged file is never mistaken for a missing one, which
    would train or evaluate the run again silently). ``redo``: what deleting it does."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        problem = f"not UTF-8 text ({e.reason} at byte {e.start})"
    except json.JSONDecodeError as e:
        problem = f"not valid JSON ({e.msg}: line {e.lineno}, column {e.colno})"
    else:
        if isinstance(data, dict):
            return data
        problem = f"not a JSON object (it holds a {type(data).__name__})"
    raise RunRecordError(f"{path}: the run's {what} is corrupt, {problem}; delete it to {redo}")


def _scalars(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if isinstance(v, (int, float, str))}


@dataclass(frozen=True)
class RunFolder:
    """One run's folder (``path``); it need not exist yet."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # -- locating ---------------------------------------------------------------------------
    @classmethod
    def of(cls, run_id: str, work_dir: Path | str) -> RunFolder:
        """The folder of run ``run_id`` in ``work_dir``, as an absolute path (a worker may
        run in another working directory)."""
        return cls((Path(work_dir) / RUNS_DIR / run_id).resolve())

    @classmethod
    def for_config(cls, config: RunConfig, work_dir: Path | str) -> RunFolder:
        """The folder of the run ``config`` describes, in ``work_dir``."""
        return cls.of(config.run_id(), work_dir)

    @classmethod
    def of_checkpoint(cls, checkpoint: Path | str) -> RunFolder:
        """The run folder holding ``checkpoint`` (``<run folder>/checkpoints/<name>``)."""
        return cls(Path(checkpoint).parent.parent)

    @property
    def run_id(self) -> str:
        return self.path.name

    def in_work_dir(self) -> bool:
        """Whether this folder sits where a work dir keeps its runs (``<work_dir>/runs/<id>``
        with its ``config.json`` naming that id): only then are the work dir's datasets
        and report folders this run's."""
        if self.path.resolve().parent.name != RUNS_DIR or not self.config_path.is_file():
            return False
        try:
            return self.read_config().run_id() == self.run_id
        except (ValueError, OSError):
            return False

    @property
    def work_dir(self) -> Path:
        """The work dir this run folder is in (``<work_dir>/runs/<run id>``), absolute."""
        return self.path.resolve().parent.parent

    def sibling(self, run_id: str) -> RunFolder:
        """The folder of run ``run_id`` beside this one (in the same work dir)."""
        return RunFolder(self.path.parent / run_id)

    # -- files ------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def result_path(self) -> Path:
        return self.path / RESULT_FILE

    @property
    def progress_path(self) -> Path:
        return self.path / PROGRESS_FILE

    @property
    def history_path(self) -> Path:
        return self.path / HISTORY_FILE

    @property
    def spool_path(self) -> Path:
        return self.path / SPOOL_FILE

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def evaluation_path(self) -> Path:
        return self.path / EVALUATION_FILE

    @property
    def evaluation_dir(self) -> Path:
        return self.path / EVALUATION_DIR

    @property
    def failure_path(self) -> Path:
        return self.path / FAILURE_FILE

    @property
    def stop_request_path(self) -> Path:
        """Written by the driver of a run whose training runs elsewhere (a Ray Train
        worker) to ask it to write its checkpoint at the current step and stop."""
        return self.path / STOP_REQUEST_FILE

    def records(self) -> list[Path]:
        """Every file of the run but its checkpoints and lock (what a copy of its results
        needs), in sorted order."""
        return [
            p
            for p in sorted(self.path.rglob("*"))
            if p.is_file()
            and p.relative_to(self.path).parts[0] != CHECKPOINTS_DIR
            and p.name != LOCK_FILE
        ]

    # -- checkpoints ------------------------------------------------------------------------
    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    def checkpoint(self, name: str) -> Path:
        """The folder of checkpoint ``name`` (``last``, ``density-...``)."""
        return self.checkpoints_dir / name

    @property
    def last(self) -> Path:
        """The checkpoint a stopped run resumes from."""
        return self.checkpoint(LAST)

    def has_checkpoints(self) -> bool:
        return self.checkpoints_dir.is_dir()

    def has_checkpoint(self, name: str = LAST) -> bool:
        """Whether checkpoint ``name`` was written (checkpoints are written atomically)."""
        return (self.checkpoint(name) / META_FILE).exists()

    def density_checkpoint_folders(self) -> list[Path]:
        """The per-density checkpoint folders, sorted by name."""
        return sorted(self.checkpoints_dir.glob(f"{DENSITY_PREFIX}*"))

    def density_checkpoints(self) -> dict[float, Path]:
        """The run's per-density checkpoints: density (from their metadata) -> folder."""
        out: dict[float, Path] = {}
        for folder in self.density_checkpoint_folders():
            try:
                out[float(read_meta(folder)["density"])] = folder
            except (CheckpointError, KeyError, ValueError):
                continue
        return out

    def select_checkpoint(self, density: float | None = None) -> Path:
        """One of the run's checkpoints.

        With ``density``, the checkpoint kept at the lowest density at or above it;
        without, the one at the domain's reported density when the run got there, else
        the lowest density it reached, else ``last``.
        """
        if not self.has_checkpoints():
            raise FileNotFoundError(
                f"neither a run folder nor a checkpoint: {_why_not_a_run(self.path)}"
            )
        kept = self.density_checkpoints()
        density = self._wanted_density(kept, density)
        if density is None and not kept:
            return self.last
        chosen = _lowest_at_or_above(kept, density)
        if chosen is None:
            assert density is not None  # with none wanted, the lowest kept is chosen
            reached = ", ".join(f"{d:.3e}" for d in sorted(kept))
            kept_text = (
                f"kept: {reached}"
                if reached
                else f"it kept none, as it never went below its first density; its last "
                f"checkpoint is {self.last.name}, chosen when no density is given"
            )
            raise ValueError(
                f"run {self.path} has no checkpoint at density >= {density:g} ({kept_text})"
            )
        return kept[chosen]

    def _wanted_density(self, kept: Iterable[float], density: float | None) -> float | None:
        """``density``, or when it is ``None`` the domain's reported density if a kept
        density is at or below it (``None``: the lowest kept, else ``last``)."""
        if density is None:
            config = self.read_config()
            reported = domains.make(config.domain.name, **config.domain.params).reported_density
            density = reported if any(d <= reported * (1 + 1e-9) for d in kept) else None
        return density

    def selected_density(self, density: float | None = None) -> float:
        """The density of the checkpoint :meth:`select_checkpoint` chooses, by the same
        rule, over every per-density checkpoint the run wrote: those its history records
        (also when their folders were since deleted, as a repository keeps only ``last``)
        and those there."""
        written = (r.get("density") for r in self.read_history() if r.get("density_checkpoint"))
        kept = {float(d) for d in written if isinstance(d, (int, float))}
        kept |= set(self.density_checkpoints())
        if not kept:
            return float(read_meta(self.select_checkpoint(density))["density"])
        wanted = self._wanted_density(kept, density)
        chosen = _lowest_at_or_above(kept, wanted)
        if chosen is None:
            return float(read_meta(self.select_checkpoint(wanted))["density"])  # says why not
        return chosen

    # -- records ----------------------------------------------------------------------------
    def read_config(self) -> RunConfig:
        return load_config(self.config_path)

    def write_config(self, config: RunConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_path, config.to_json())

    def read_result(self) -> dict[str, Any] | None:
        """``result.json`` (see :meth:`write_result`), or ``None`` before the run ended;
        :class:`RunRecordError` if it is damaged."""
        return read_record(
            self.result_path, "result", "finish the run again from its last checkpoint"
        )

    def write_result(self, result: RunResult, **extra: Any) -> dict[str, Any]:
        """Write ``result.json``: how a run ended (a :class:`sparling.train.RunResult`)
        plus ``extra``; returns what it wrote."""
        summary = {
            "status": result.status,
            "samples": result.samples,
            "density": result.density,
            "density_checkpoints": result.density_checkpoints,
            "validations": len(result.history),
            "wall_seconds": result.wall_seconds,
            "last": result.history[-1] if result.history else None,
            **extra,
        }
        atomic_write_text(self.result_path, json.dumps(summary, indent=2, default=float))
        return summary

    def read_progress(self) -> dict[str, Any] | None:
        return read_json(self.progress_path)

    def write_progress(self, info: Mapping[str, Any]) -> None:
        """Replace ``progress.json`` with ``info`` (atomically: displays poll it)."""
        atomic_write_text(self.progress_path, json.dumps(dict(info)))

    def read_history(self) -> list[dict[str, Any]]:
        """The validation records in ``history.json`` (none if it is missing or unreadable)."""
        try:
            history = json.loads(self.history_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return []
        if not isinstance(history, list):
            return []
        return [r for r in history if isinstance(r, dict) and "samples" in r]

    def write_history(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Replace ``history.json`` with ``records`` (their number and string values)."""
        history = [_scalars(r) for r in records]
        atomic_write_text(self.history_path, json.dumps(history, indent=1) + "\n")

    def read_evaluation(self) -> dict[str, Any] | None:
        """The saved test metrics; an ``evaluation.json`` written before the run's total
        wall time was named ``total_wall_seconds`` has it as ``wall_seconds``, which is
        each validation's metric."""
        data = read_record(self.evaluation_path, "test evaluation", "evaluate its checkpoint again")
        if data is not None and "wall_seconds" in data:
            data.setdefault("total_wall_seconds", data.pop("wall_seconds"))
        return data

    def write_evaluation(self, metrics: Mapping[str, float]) -> None:
        atomic_write_text(self.evaluation_path, json.dumps(dict(metrics), indent=2))


def _budget_free(config: RunConfig) -> str:
    """The hash of ``config``'s identity without its budget: what two runs share when one
    is the other with more (or fewer) samples to train."""
    identity = config.identity()
    identity.pop("budget_samples", None)
    return canonical_hash(identity)


@dataclass(frozen=True)
class Continuation:
    """A run that a run with a larger budget starts from: its folder, and the sample count
    of its last checkpoint."""

    source: RunFolder
    samples: int
    #: how the source ended when it stopped by itself ("target-reached", "collapsed"):
    #: a larger budget ends the same way, so its result is this run's; ``None`` when it
    #: ran out of budget (or has not ended), and this run trains on from its checkpoint
    ended: str | None = None

    def message(self, name: str, budget: int) -> str:
        if self.ended is not None:
            return (
                f"{name}: the same as run {self.source.run_id} but for a larger budget "
                f"({budget}); that run ended by itself ({self.ended}) at sample "
                f"{self.samples}, so its result is this run's"
            )
        return (
            f"{name}: continues run {self.source.run_id} from its checkpoint at sample "
            f"{self.samples} (the same config with a smaller budget), to {budget}"
        )


class ShorterBudgetRuns:
    """The checkpointed runs of one runs folder, keyed by their budget-free identity: read
    once (each ``config.json`` parsed once), then asked for any number of runs."""

    def __init__(self, runs: Path) -> None:
        self._by_identity: dict[str, list[tuple[RunFolder, RunConfig]]] = {}
        for path in sorted(runs.iterdir()) if runs.is_dir() else []:
            source = RunFolder(path)
            if not source.has_checkpoint():
                continue
            try:
                other = source.read_config()
            except (OSError, ValueError, SparlingError):
                continue
            self._by_identity.setdefault(_budget_free(other), []).append((source, other))

    def source_for(self, folder: RunFolder, config: RunConfig) -> Continuation | None:
        """The run in this folder that ``config``'s run (in ``folder``) would continue, the
        furthest when several can; see :func:`shorter_budget_source`."""
        if folder.has_checkpoint() or folder.read_result() is not None:
            return None
        best: Continuation | None = None
        for source, other in self._by_identity.get(_budget_free(config), []):
            if source.path == folder.path or other.run_id() == config.run_id():
                continue
            found = _continuable(source, other, config)
            if found is not None and (best is None or found.samples > best.samples):
                best = found
        return best


#: how a run ends by itself, whatever its budget (when it is within the budget)
ENDED_BY_ITSELF = ("target-reached", "collapsed")


def _continuable(source: RunFolder, other: RunConfig, config: RunConfig) -> Continuation | None:
    """How ``config``'s run can start from ``source`` (which runs ``other``, differing from
    ``config`` only in its budget): from its last checkpoint, within ``config``'s budget,
    on a trajectory the longer run shares; with its result too when it ended by itself
    (reached its target or collapsed: more budget ends it the same way). ``None`` when it
    cannot."""
    try:
        samples = int(read_meta(source.last)["samples"])
        result = source.read_result()
    except (OSError, ValueError, KeyError, CheckpointError, SparlingError):
        return None
    if samples > config.budget_samples:
        return None
    status = None if result is None else result.get("status")
    if status is not None and status != "budget-exhausted" and status not in ENDED_BY_ITSELF:
        return None
    if samples >= other.budget_samples and other.budget_samples % other.val_interval:
        # its budget ended between two validation points, where it validated (and AST
        # moved) once more than a run with a larger budget does
        return None
    return Continuation(source, samples, status if status in ENDED_BY_ITSELF else None)


def shorter_budget_source(folder: RunFolder, config: RunConfig) -> Continuation | None:
    """The run (and the sample count of its last checkpoint) that the run ``config``
    describes, in ``folder``, would start from (:func:`continue_from_shorter_budget`):
    ``None`` when this run has a checkpoint or a result of its own, or no such run is in
    its work dir. To ask for many runs of one work dir, build one
    :class:`ShorterBudgetRuns` and ask it."""
    if folder.has_checkpoint() or folder.read_result() is not None:
        return None
    return ShorterBudgetRuns(folder.path.parent).source_for(folder, config)


def continue_from_shorter_budget(folder: RunFolder, config: RunConfig) -> Continuation | None:
    """Start the run ``config`` describes (in ``folder``, which has no checkpoint yet) from
    the furthest checkpoint of a run in the same work dir whose config differs only in a
    smaller budget; returns that run and the checkpoint's sample count, or ``None`` when
    there is none. When that run ended by itself (reached its target or collapsed), its
    ``result.json`` is copied too: the run is then finished, with that run's result.

    Training does not read the budget before it ends (the learning rate, the sample order
    and AST's steps depend on the sample count only), so the first samples of a run with
    a larger budget are the shorter run's, and continuing its checkpoint gives, bit for
    bit, what training from scratch would. Its checkpoints (``last`` and the per-density
    ones) and ``history.json`` are copied, named as this run's; the shorter run's folder
    is left as it was.
    """
    found = shorter_budget_source(folder, config)
    if found is None:
        return None
    source = found.source
    run_id = config.run_id()
    for checkpoint in sorted(source.checkpoints_dir.iterdir()):
        if not (checkpoint / META_FILE).is_file():
            continue  # a temp folder a killed writer left
        state, meta = load_checkpoint(checkpoint)
        meta = {k: v for k, v in meta.items() if k != "sha256"}
        meta.update(run_id=run_id, continued_from=source.run_id)
        save_checkpoint(folder.checkpoint(checkpoint.name), state, meta, config.to_json())
    # ``last`` sorts after ``density-*``: a copy cut short leaves no ``last`` and is made again
    folder.write_history(source.read_history())
    if found.ended is not None:
        summary = source.read_result() or {}
        summary["continued_from"] = source.run_id
        atomic_write_text(folder.result_path, json.dumps(summary, indent=2, default=float))
    return found


def _why_not_a_run(path: Path) -> str:
    """``path`` and why it is neither a run folder nor a checkpoint folder."""
    from .fileio import why_missing

    expected = (
        "a run folder (<work-dir>/runs/<run id>, holding checkpoints/) or a checkpoint "
        f"folder (holding {META_FILE} and {STATE_FILE}) is expected"
    )
    if not path.exists():
        return f"{why_missing(path, 'folder')}; {expected}"
    if not path.is_dir():
        what = " (an exported model)" if path.suffix == ".safetensors" else ""
        return f"{path} is a file{what}; {expected}"
    return f"{path} holds neither checkpoints/ nor {META_FILE}; {expected}"


def _lowest_at_or_above(kept: Iterable[float], density: float | None) -> float | None:
    """The rule both :meth:`RunFolder.select_checkpoint` and
    :meth:`RunFolder.selected_density` choose by: the lowest of the ``kept`` densities at
    or above ``density`` (all of them when it is ``None``); ``None`` when there is none."""
    above = [d for d in kept if density is None or d >= density * (1 - 1e-9)]
    return min(above) if above else None


def select_checkpoint(path: Path | str, density: float | None = None) -> Path:
    """Resolve a run folder or a checkpoint folder to one checkpoint: a checkpoint folder
    is itself; a run folder chooses as :meth:`RunFolder.select_checkpoint` does."""
    path = Path(path)
    if (path / META_FILE).is_file():
        if density is not None:
            raise ValueError("--density selects among a run's checkpoints: pass the run folder")
        return path
    return RunFolder(path).select_checkpoint(density)


# -- a run's model -----------------------------------------------------------------------------
def resolve_init_from(init_from: str, run_dir: Path | None = None) -> Path:
    """The checkpoint folder ``init_from`` names (see :attr:`RunConfig.init_from`).

    ``run:<id>`` references are looked up beside ``run_dir`` (the run being built).
    Raises :class:`~sparling.errors.TrainingFailed` saying what is missing.
    """
    density: float | None = None
    if init_from.startswith(RUN_REF_PREFIX):
        key, density = parse_run_ref(init_from)
        if run_dir is None:
            raise TrainingFailed(
                f"init_from {init_from!r} refers to a run beside this one: "
                "the run's own folder is needed to find it"
            )
        source = RunFolder(run_dir).sibling(key)
        if not source.has_checkpoints():
            raise TrainingFailed(
                f"init_from {init_from!r}: run {key} has no checkpoints in {source.path} "
                "(has it trained yet?)"
            )
        folder = source.path
    else:
        folder = Path(init_from)
    try:
        return select_checkpoint(folder, density)
    except (FileNotFoundError, ValueError) as e:
        raise TrainingFailed(f"init_from {init_from!r}: {e}") from None


def init_from_density(init_from: str, run_dir: Path) -> float:
    """The density of the checkpoint ``init_from`` names (see :func:`resolve_init_from`)
    for the run in ``run_dir``: chosen from what the source run recorded, so that it is the
    checkpoint the run was built from also after the source's per-density folders were
    deleted."""
    if init_from.startswith(RUN_REF_PREFIX):
        key, density = parse_run_ref(init_from)
        source = RunFolder(run_dir).sibling(key)
        if source.history_path.is_file():
            return source.selected_density(density)
    return float(read_meta(resolve_init_from(init_from, run_dir))["density"])


def architecture_overrides(config: RunConfig) -> dict[str, Any]:
    """Every field of ``config``'s resolved ``g`` and ``h``, as flat model overrides.
    Checkpoints and exported files record them, so that they build the model they were
    trained as whatever later becomes of the preset their config names."""
    arch = config.architecture()
    return {**arch.motif.model_dump(mode="json"), **arch.downstream.model_dump(mode="json")}


def build_run_model(
    config: RunConfig,
    domain: Domain,
    run_dir: Path | None = None,
    *,
    architecture: Mapping[str, Any] | None = None,
) -> SparlingModel:
    """The model a config describes, with ``init_from``/``freeze_motif_model`` applied
    (``run_dir``: the run's folder, for ``run:`` references in ``init_from``).
    ``architecture`` (:func:`architecture_overrides` as a checkpoint recorded them)
    replaces the preset and overrides when given."""
    overrides = dict(config.model.overrides if architecture is None else architecture)
    if config.model.channels is not None:
        overrides["channels"] = config.model.channels
    model = build_model(
        domain, config.model.preset, config.bottleneck.name, config.bottleneck.params, **overrides
    )
    if config.init_from:
        # The Retrained method: take g from another run's checkpoint (at the density it
        # was saved at); the rest of the model starts fresh.
        state, _ = load_checkpoint(resolve_init_from(config.init_from, run_dir))
        g_state = {k[2:]: v for k, v in state["model"].items() if k.startswith("g.")}
        model.g.load_state_dict(g_state)
    if config.freeze_motif_model:
        for p in model.g.parameters():
            p.requires_grad_(False)
    return model


#: what :func:`load_weights` says to do about a checkpoint's weights that do not fit
CHECKPOINT_MISFIT_HINT = (
    "they were written for another definition of the model preset, before checkpoints "
    "recorded their architecture: evaluate them with the code that trained them, or pin "
    "that architecture in the config's model.overrides"
)


def load_weights(
    model: SparlingModel,
    weights: Mapping[str, Any],
    source: Path | str,
    *,
    hint: str = CHECKPOINT_MISFIT_HINT,
    error: type[Exception] = CheckpointError,
) -> None:
    """``model.load_state_dict(weights)``, or ``error`` (a :class:`CheckpointError`)
    naming ``source`` and the parameters that do not fit: missing, unexpected, of other
    shapes (weights written for another definition of the preset, before checkpoints
    recorded their architecture), then ``hint``, what to do about it. Checkpoints and
    exported models (:func:`sparling.export.load_model`) both load through it."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        own = model.state_dict()
        missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
        shapes = sorted(
            k
            for k in set(own) & set(weights)
            if getattr(weights[k], "shape", None) != getattr(own[k], "shape", None)
        )
        found = [("missing", missing), ("unexpected", unexpected), ("other shapes", shapes)]
        detail = "; ".join(
            f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for what, keys in found
            if keys
        )
        detail = detail or str(e).splitlines()[0]
        raise error(
            f"{source}: the weights do not fit the model its config builds ({detail}); {hint}"
        ) from None
