"""MLflow tracking for sweeps and runs: settings, the local tracking server, the run API.

Four parts, each usable alone:

* **Settings** (:func:`load_settings`): ``mlflow.yaml`` (or the built-in defaults) with two
  profiles. ``local`` (the default) keeps a SQLite store and an artifact folder under the
  work dir, ``<work_dir>/mlflow/``: nothing to install or start by hand. ``server`` logs to
  a tracking server named by ``MLFLOW_TRACKING_URI`` (e.g. ``http://mlflow.example:5000``).
  Credentials are never read from a file: MLflow's client takes them from
  ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (or ``MLFLOW_TRACKING_TOKEN``).

* **The local tracking server** (:class:`LocalTrackingServer`, :func:`tracking_uri`).
  SQLite does not take several writing processes well: on a fresh store, processes that
  open it at once race each other through MLflow's schema migrations (measured: 10 of 16
  writer processes in four tries of 4 died with ``table ... already exists`` or an alembic
  version mismatch), and on a live store every write takes the file lock with a 5 s busy
  timeout, past which the writer fails with ``database is locked``. So the local profile
  never lets runs write the file: one ``mlflow server`` process (one uvicorn worker, bound
  to 127.0.0.1) owns the store and proxies artifacts into the local folder, and every run,
  driver and Ray worker, logs to it over HTTP. ``server.json`` beside the store names the
  live server so that a second process (a resumed sweep, ``sparling ui``) reuses it; each
  user holds a lease and the last one to leave stops it.

* **The run API** (:class:`Tracker`): experiments, one parent run per sweep and one child
  run per training run, found again by tags (never duplicated), stale runs marked KILLED.

* **The worker-side logger** (:class:`MetricLogger`): buffered ``log_batch`` sends from a
  background thread that retries with backoff until the server answers (it may restart in
  the middle of a run), an optional on-disk spool that survives a worker crash, and
  de-duplication of ``(key, step)`` points already in the run, so a resumed run never
  doubles a curve.

Conventions (tags a report or the UI can filter on):

==========================  ===============================================================
``sparling.kind``           ``sweep`` on a parent run, ``run`` on a child run
``sparling.sweep_name``     the sweep's name, on its parent run
``sparling.run_id``         the run's config hash (``RunConfig.run_id()``), child runs
``sparling.method``         bottleneck name, e.g. ``sparling``, ``sparling-st``
``sparling.domain``         e.g. ``digit-circle``
``sparling.seed``           the run seed
``sparling.git_commit``     ``git rev-parse HEAD`` of the project, else ``unknown``
``sparling.git_dirty``      ``true`` when the work tree had uncommitted changes
``sparling.versions``       ``sparling=... torch=... ray=... mlflow=...``
``mlflow.parentRunId``      set on children, so the MLflow UI nests them under the sweep
==========================  ===============================================================

Child run names are ``"<method> seed=<seed>"`` (:func:`run_name`); a parent run is named
after its sweep.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import signal
import socket
import string
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sparling.errors import SparlingError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Run

_log = logging.getLogger(__name__)

#: The project root (for ``git rev-parse``) and its default settings file.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
SETTINGS_FILE = "mlflow.yaml"

PROFILE_ENV = "SPARLING_MLFLOW_PROFILE"
CONFIG_ENV = "SPARLING_MLFLOW_CONFIG"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
#: Read by MLflow's own client (never by this module, and never from a file).
CREDENTIAL_ENVS = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)

# MLflow's limits on what one run may hold (mlflow.utils.validation, 3.x).
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000

# Tag names.
# The tags are the contract between the sweep driver (which writes them) and the report
# (which reads runs back by them): one definition here serves both.
TAG_KIND = "sparling.kind"
TAG_SWEEP = "sparling.sweep_name"
TAG_EXPECTED = "sparling.expected_runs"
TAG_SWEPT_FIELDS = "sparling.swept_fields"
TAG_SWEPT = "sparling.swept"
TAG_STATUS = "sparling.status"
TAG_FAILURE = "sparling.failure"
TAG_RUN_ID = "sparling.run_id"
TAG_METHOD = "sparling.method"
TAG_DOMAIN = "sparling.domain"
TAG_SEED = "sparling.seed"
TAG_COMMIT = "sparling.git_commit"
TAG_DIRTY = "sparling.git_dirty"
TAG_VERSIONS = "sparling.versions"
TAG_PARENT = "mlflow.parentRunId"
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: Query to add to UI links: the MLflow 3 UI opens in its GenAI mode otherwise.
UI_QUERY = "workflowType=machine_learning"

_TERMINAL = ("FINISHED", "FAILED", "KILLED")


class TrackingError(SparlingError):
    """Tracking could not do what was asked; the message says why and what to do."""


class TrackingConfigError(TrackingError, ValueError):
    """A bad settings file, key or environment variable (named in the message)."""


def ensure_writable(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and check a file can be written in it; otherwise a
    :class:`TrackingError` naming it and why (read-only, full, not a folder), raised
    before anything is run, so nothing already there is touched."""
    probe = Path(folder) / f".write-check-{os.getpid()}"
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise TrackingError(
            f"{what} {folder} is not writable ({e.strerror or e}): artifacts could not be "
            "stored. Fix it (or point artifact_location in mlflow.yaml elsewhere) and run "
            "again; nothing was started."
        ) from e
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


class TrackingServerError(TrackingError):
    """The local tracking server did not start, or a live one could not be used."""


# =========================================================================================
# Credentials: recognised and kept out of params, tags, files and printed URIs
# =========================================================================================
_SECRET_TOKEN = re.compile(
    r"^(.*(password|passwd|secret|credentials?)"
    r"|(access|auth|api|bearer|refresh|id|session|private)?token"
    r"|(api|access|secret|private|signing|encryption)?key"
    r"|pwd|auth|authorization|cookie)$"
)
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]*):[^/@\s]*@")
_SECRET_VALUE = re.compile(
    r"(?i)\bbearer\s+\S+"  # an Authorization header value
    r"|\b(AKIA|ASIA)[0-9A-Z]{16}\b"  # AWS access key id
    r"|\b(ghp|gho|ghu|ghs|github_pat)_[A-Za-z0-9_]{20,}"  # GitHub tokens
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"  # Slack tokens
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)
REDACTED = "[redacted]"


def is_secret_key(key: str) -> bool:
    """Whether a param/tag/settings key names a credential (``db.password``, ``api_key``...).

    The key is split into words (on ``.``, ``_``, ``-``, camel case) and each word is
    checked, so ``max_tokens`` or ``tokenizer`` are not taken for secrets but
    ``auth_token``, ``aws.secret_access_key`` and ``key`` are.
    """
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower()
    words = [w for w in re.split(r"[^a-z0-9]+", spaced) if w]
    pairs = [a + b for a, b in zip(words, words[1:], strict=False)]  # "api","key" -> "apikey"
    return any(_SECRET_TOKEN.match(w) for w in words + pairs)


def redact_uri(uri: str) -> str:
    """``https://user:pass@host/x`` -> ``https://user:***@host/x`` (other text unchanged)."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", uri)


def scrub(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``values`` safe to log: credential-like keys and values are redacted.

    A key that names a credential keeps its name with the value ``[redacted]`` (so a reader
    sees that something was there); passwords inside URIs are masked; values that look like
    bearer tokens, cloud keys or private keys are redacted whatever their key.
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        if is_secret_key(key):
            out[key] = REDACTED
        elif isinstance(value, str):
            masked = redact_uri(value)
            out[key] = REDACTED if _SECRET_VALUE.search(masked) else masked
        else:
            out[key] = value
    return out


def _has_userinfo_password(uri: str) -> bool:
    return bool(_USERINFO.search(uri))


# =========================================================================================
# Settings
# =========================================================================================
class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _LocalProfile(_Section):
    store_uri: str = "sqlite:///mlflow/mlflow.db"
    """Backend store the local server owns; a relative SQLite path is under the work dir."""
    artifact_location: str = "mlflow/artifacts"
    """Folder the local server writes artifacts to (relative: under the work dir)."""
    port: int | None = Field(None, ge=1, le=65535)
    """Port of the local server (``null``: any free port)."""
    start_timeout: float = Field(120.0, gt=0)
    """Seconds to wait for the local server to answer ``/health``."""


class _ServerProfile(_Section):
    tracking_uri: str | None = None
    """The server's URI; ``MLFLOW_TRACKING_URI`` overrides it (and usually provides it)."""
    artifact_location: str | None = None
    """Artifact root for new experiments (``null``: the server's default)."""


class _Profiles(_Section):
    local: _LocalProfile = Field(default_factory=_LocalProfile)
    server: _ServerProfile = Field(default_factory=_ServerProfile)


class _SettingsFile(_Section):
    profile: Literal["local", "server"] = "local"
    experiment_name: str = "sparling-{sweep}"
    profiles: _Profiles = Field(default_factory=_Profiles)


_EXPERIMENT_FIELDS = ("domain", "sweep")


@dataclass(frozen=True)
class TrackingSettings:
    """Where runs are tracked. Build it with :func:`load_settings`.

    ``profile == "local"``: ``store_uri``/``artifact_location`` are absolute and a
    :class:`LocalTrackingServer` in front of them provides the URI to log to.
    ``profile == "server"``: ``tracking_uri`` is that URI.
    """

    profile: Literal["local", "server"]
    work_dir: Path
    experiment_name: str
    """A template; ``{domain}`` and ``{sweep}`` are filled by :meth:`experiment_for`."""
    source: str
    """Where these settings came from (file or built-in defaults, and env overrides)."""
    tracking_uri: str | None = None
    store_uri: str | None = None
    artifact_location: str | None = None
    port: int | None = None
    start_timeout: float = 120.0

    @property
    def is_local(self) -> bool:
        return self.profile == "local"

    @property
    def state_dir(self) -> Path:
        """Folder of ``server.json``, the server log, the lock and the leases.

        Beside the SQLite file, so every process that opens the same store finds the same
        server, whatever its work dir; for another store, ``<work_dir>/mlflow``.
        """
        db = sqlite_path(self.store_uri) if self.store_uri else None
        return db.parent if db is not None else self.work_dir / "mlflow"

    @property
    def experiment_artifact_location(self) -> str | None:
        """What to pass to ``create_experiment``: ``None`` on the local profile (the local
        server stores artifacts in ``artifact_location`` through its proxy, reachable from
        every process), else the configured artifact root (or ``None``: server default)."""
        return None if self.is_local else self.artifact_location

    def experiment_for(self, domain: str = "", sweep: str = "") -> str:
        """The experiment to log a sweep to: the template with ``{sweep}`` and ``{domain}``
        filled in, e.g. ``sparling-paper-digit-circle`` (default ``sparling-{sweep}``)."""
        return self.experiment_name.format(domain=domain, sweep=sweep).strip("-_ ") or "sparling"

    def describe(self) -> str:
        """One line for people: the profile and where runs and artifacts go (no secrets)."""
        if self.is_local:
            return (
                f"profile local: store {self.store_uri}, artifacts {self.artifact_location} "
                f"(settings: {self.source})"
            )
        where = redact_uri(self.tracking_uri or "?")
        return f"profile server: {where} (settings: {self.source})"


_BUILTIN = "built-in defaults"


def load_settings(
    work_dir: Path,
    path: Path | None = None,
    env: Mapping[str, str] = os.environ,
) -> TrackingSettings:
    """Tracking settings for a work dir.

    The file is ``path``, else ``$SPARLING_MLFLOW_CONFIG``, else ``./mlflow.yaml`` when it
    exists, else the built-in defaults (a local SQLite store and artifact folder under
    ``<work_dir>/mlflow/``). Relative paths in the file resolve against ``work_dir``.

    Environment overrides: ``SPARLING_MLFLOW_PROFILE`` picks the profile;
    ``MLFLOW_EXPERIMENT_NAME`` replaces the experiment name; ``MLFLOW_TRACKING_URI`` is the
    server on the ``server`` profile, and on the ``local`` profile either replaces the
    store the local server owns (a database URI; relative to the current folder, as in
    MLflow) or, being an ``http(s)://`` URI, means "a server already runs there" and
    switches to the ``server`` profile (unless ``SPARLING_MLFLOW_PROFILE=local`` asks for
    the local profile explicitly: then that URI is ignored).

    Raises :class:`TrackingConfigError` naming the file and key for a missing file, bad
    YAML, an unknown key, a bad value, or a credential written in a file.
    """
    work_dir = Path(work_dir).expanduser().resolve()
    source, raw = _read_settings_file(path, env)
    _refuse_credentials(raw, source)
    try:
        parsed = _SettingsFile.model_validate(raw)
    except ValidationError as e:
        lines = [f"{source}: invalid MLflow settings:"]
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "<root>"
            lines.append(f"  {loc}: {err['msg']}")
        raise TrackingConfigError("\n".join(lines)) from None

    overrides: list[str] = []
    profile: Literal["local", "server"] = parsed.profile
    if env.get(PROFILE_ENV):
        value = env[PROFILE_ENV].strip()
        if value not in ("local", "server"):
            raise TrackingConfigError(
                f"{PROFILE_ENV}={value!r}: the profile must be 'local' or 'server'"
            )
        profile = "local" if value == "local" else "server"
        overrides.append(PROFILE_ENV)
    experiment = parsed.experiment_name
    if env.get(EXPERIMENT_ENV):
        experiment = env[EXPERIMENT_ENV]
        overrides.append(EXPERIMENT_ENV)
    _check_experiment_template(experiment, source if EXPERIMENT_ENV not in overrides else None)

    env_uri = (env.get(TRACKING_URI_ENV) or "").strip()
    if env_uri:
        overrides.append(TRACKING_URI_ENV)
        if _has_userinfo_password(env_uri):
            raise TrackingConfigError(_credential_message(f"{TRACKING_URI_ENV} holds a password"))
        if profile == "local" and _is_remote_uri(env_uri):
            if PROFILE_ENV in overrides:
                # Asked for "local" explicitly: a globally exported server URI is not ours.
                overrides[-1] = f"{TRACKING_URI_ENV} ignored"
                env_uri = ""
            else:
                profile = "server"  # "log there": a server already runs at that URI
    described = source + (f" + {', '.join(overrides)}" if overrides else "")

    if profile == "server":
        server = parsed.profiles.server
        uri = env_uri or (server.tracking_uri or "").strip()
        if not uri:
            raise TrackingConfigError(
                f"{source}: the 'server' profile needs the tracking server's URI: set "
                f"{TRACKING_URI_ENV} (e.g. http://mlflow.example:5000) or "
                "profiles.server.tracking_uri"
            )
        if not _is_remote_uri(uri) and not uri.startswith(("postgresql", "mysql", "mssql")):
            raise TrackingConfigError(
                f"{TRACKING_URI_ENV if env_uri else source + ': profiles.server.tracking_uri'}"
                f"={uri!r}: the 'server' profile logs to a tracking server (http(s)://...) or a "
                "server database; for a local store use the 'local' profile, which runs a "
                "server in front of it so that parallel runs can write"
            )
        return TrackingSettings(
            profile="server",
            work_dir=work_dir,
            experiment_name=experiment,
            source=described,
            tracking_uri=uri,
            artifact_location=server.artifact_location,
        )

    local = parsed.profiles.local
    if env_uri:
        store = _resolve_store_uri(env_uri, Path.cwd())
    else:
        store = _resolve_store_uri(local.store_uri, work_dir)
    artifacts = _resolve_folder(local.artifact_location, work_dir)
    return TrackingSettings(
        profile="local",
        work_dir=work_dir,
        experiment_name=experiment,
        source=described,
        store_uri=store,
        artifact_location=str(artifacts),
        port=local.port,
        start_timeout=local.start_timeout,
    )


def _read_settings_file(path: Path | None, env: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    if path is None and env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
    if path is None:
        default = Path.cwd() / SETTINGS_FILE
        if not default.is_file():
            return _BUILTIN, {}
        path = default
    path = Path(path).expanduser()
    if not path.is_file():
        raise TrackingConfigError(f"MLflow settings file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise TrackingConfigError(f"{path}: not valid YAML: {e}") from None
    if loaded is None:
        return str(path), {}
    if not isinstance(loaded, dict):
        raise TrackingConfigError(
            f"{path}: MLflow settings must be a mapping, got {type(loaded).__name__}"
        )
    return str(path), loaded


def _credential_message(what: str) -> str:
    return (
        f"{what}: credentials are read only from the environment variables "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN), "
        "never from files or URIs"
    )


def _refuse_credentials(raw: Any, source: str, prefix: str = "") -> None:
    """Refuse credential-like keys and URIs with a password anywhere in the file."""
    if isinstance(raw, dict):
        for key, value in raw.items():
            where = f"{prefix}{key}"
            if is_secret_key(str(key)):
                raise TrackingConfigError(_credential_message(f"{source}: key {where!r}"))
            _refuse_credentials(value, source, where + ".")
    elif isinstance(raw, str) and _has_userinfo_password(raw):
        raise TrackingConfigError(
            _credential_message(f"{source}: {prefix.rstrip('.')!r} holds a password")
        )


def _check_experiment_template(template: str, source: str | None) -> None:
    where = f"{source}: experiment_name" if source else EXPERIMENT_ENV
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise TrackingConfigError(f"{where}={template!r}: {e}") from None
    unknown = [n for n in names if n not in _EXPERIMENT_FIELDS]
    if unknown:
        raise TrackingConfigError(
            f"{where}={template!r}: unknown placeholder {{{unknown[0]}}} "
            f"(accepted: {', '.join('{' + f + '}' for f in _EXPERIMENT_FIELDS)})"
        )


def _is_remote_uri(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "databricks"))


def sqlite_path(uri: str | None) -> Path | None:
    """The file of a ``sqlite:///`` URI (``None`` for other URIs)."""
    if not uri or not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :])


def _resolve_store_uri(uri: str, base: Path) -> str:
    uri = uri.strip()
    if uri.startswith("sqlite:"):
        if not uri.startswith("sqlite:///") or uri in ("sqlite:///", "sqlite:///:memory:"):
            raise TrackingConfigError(
                f"store URI {uri!r}: the local profile needs a SQLite file, "
                "e.g. sqlite:///mlflow/mlflow.db"
            )
        path = Path(uri[len("sqlite:///") :]).expanduser()
        return f"sqlite:///{(base / path).resolve()}"
    if "://" not in uri:  # a plain folder: MLflow's file store
        return str((base / Path(uri).expanduser()).resolve())
    return uri


def _resolve_folder(location: str, base: Path) -> Path:
    if location.startswith("file://"):
        location = location[len("file://") :]
    elif "://" in location:
        raise TrackingConfigError(
            f"artifact_location {location!r}: the local profile keeps artifacts in a local "
            "folder; a remote artifact store belongs to the 'server' profile"
        )
    return (base / Path(location).expanduser()).resolve()


# =========================================================================================
# The local tracking server
# =========================================================================================
SERVER_FILE = "server.json"
SERVER_LOG = "server.log"
_LOCK_FILE = "server.lock"
_LEASES = "leases"
_HOST = "127.0.0.1"


def _proc_start_time(pid: int) -> int | None:
    """Kernel start time of a process (jiffies since boot), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may hold spaces and parentheses: split after its closing ")".
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19]) if len(fields) > 19 else None


def _process_alive(pid: int, start_time: int | None = None) -> bool:
    """Alive and not a zombie; the same process when ``start_time`` is known."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, someone else's
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
    except (OSError, IndexError):
        pass  # no /proc: trust kill(0)
    if start_time is not None:
        current = _proc_start_time(pid)
        if current is not None and current != start_time:
            return False
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def free_port(host: str = _HOST) -> int:
    """A port free on ``host`` now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_free(port: int, host: str = _HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def server_healthy(uri: str, timeout: float = 2.0) -> bool:
    """Whether an MLflow server answers ``GET /health`` with 200."""
    # No proxy: an HTTP(S)_PROXY in the environment must not intercept 127.0.0.1.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{uri.rstrip('/')}/health", timeout=timeout) as r:
            return bool(r.status == 200)
    except (OSError, urllib.error.URLError, ValueError):
        return False


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float) -> Iterator[None]:
    """An exclusive ``flock`` (released if the process dies), waiting up to ``timeout``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise TrackingServerError(
                        f"another process holds {path} for more than {timeout:.0f} s "
                        "(starting or stopping the local MLflow server)"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _atomic_write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


@dataclass
class _Lease:
    path: Path
    pid: int = field(default_factory=os.getpid)


class LocalTrackingServer:
    """``mlflow server`` on 127.0.0.1 owning a local store; started once, shared, stopped last.

    Use it as a context manager (or :meth:`start` / :meth:`stop`)::

        with LocalTrackingServer.from_settings(settings) as server:
            Tracker(server.uri)...

    :meth:`start` reuses the live server named by ``server.json`` in :attr:`state_dir`
    (same store) or starts one, waits for ``/health`` (raising
    :class:`TrackingServerError` with the tail of :attr:`log_path` if it does not answer
    within ``start_timeout``), and takes a lease. :meth:`stop` gives the lease back and
    stops the server when no live process holds one any more. A ``server.json`` whose
    process is gone (or is another program with a reused pid) is ignored.

    The server runs one uvicorn worker: one process owns the SQLite file, so its writes
    wait on each other inside SQLite's busy timeout instead of failing. MLflow's job runner
    (GenAI scorers, a pool of ~8 extra processes and ~1 GB of memory) is switched off.
    """

    def __init__(
        self,
        store_uri: str,
        artifact_location: Path,
        state_dir: Path,
        *,
        port: int | None = None,
        start_timeout: float = 120.0,
    ) -> None:
        self.store_uri = store_uri
        self.artifact_location = Path(artifact_location)
        self.state_dir = Path(state_dir)
        self.requested_port = port
        self.start_timeout = start_timeout
        self.port: int | None = None
        self.pid: int | None = None
        self.started = False
        """True when this object started the server process (not reused it)."""
        self.start_seconds: float | None = None
        """Seconds from launch to the first healthy ``/health`` (when this object started it)."""
        self._pid_start: int | None = None
        self._popen: subprocess.Popen[bytes] | None = None
        self._lease: _Lease | None = None

    @classmethod
    def from_settings(
        cls, settings: TrackingSettings, port: int | None = None
    ) -> LocalTrackingServer:
        if (
            not settings.is_local
            or settings.store_uri is None
            or settings.artifact_location is None
        ):
            raise TrackingConfigError(
                f"a local tracking server needs the 'local' profile ({settings.describe()})"
            )
        return cls(
            settings.store_uri,
            Path(settings.artifact_location),
            settings.state_dir,
            port=port if port is not None else settings.port,
            start_timeout=settings.start_timeout,
        )

    # -- paths and state -------------------------------------------------------------------
    @property
    def uri(self) -> str:
        if self.port is None:
            raise TrackingServerError("the local tracking server is not started")
        return f"http://{_HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.state_dir / SERVER_LOG

    @property
    def info_path(self) -> Path:
        return self.state_dir / SERVER_FILE

    @property
    def running(self) -> bool:
        return self.pid is not None and _process_alive(self.pid, self._pid_start)

    def __enter__(self) -> LocalTrackingServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- start / reuse -----------------------------------------------------------------------
    def start(self) -> str:
        """Reuse the live server on this store or start one; returns the URI to log to."""
        if self._lease is not None:
            return self.uri
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ensure_writable(self.artifact_location, "the local MLflow artifact folder")
        with _file_lock(self.state_dir / _LOCK_FILE, self.start_timeout + 30):
            info = self._live_server()
            if info is not None:
                self.port, self.pid = int(info["port"]), int(info["pid"])
                self._pid_start = info.get("pid_start")
                self.started = False
                _log.info("reusing the MLflow server at %s (pid %s)", self.uri, self.pid)
            else:
                self._launch()
            self._lease = self._take_lease()
        return self.uri

    def _server_info(self) -> dict[str, Any] | None:
        """``server.json`` if it names a live MLflow server process on this store."""
        try:
            info: dict[str, Any] = json.loads(self.info_path.read_text())
            pid = int(info["pid"])
            int(info["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if info.get("store_uri") != self.store_uri:
            return None
        if not _process_alive(pid, info.get("pid_start")) or "mlflow" not in _cmdline(pid):
            _log.info("ignoring stale %s (pid %s is gone)", self.info_path, pid)
            return None
        return info

    def _live_server(self) -> dict[str, Any] | None:
        """The server described by ``server.json`` if it is alive, ours and answering."""
        info = self._server_info()
        if info is None:
            return None
        pid, port = int(info["pid"]), int(info["port"])
        uri = f"http://{_HOST}:{port}"
        deadline = time.monotonic() + self.start_timeout
        # Alive and ours: it may still be starting (its starter was interrupted) or busy.
        while not server_healthy(uri):
            if not _process_alive(pid, info.get("pid_start")):
                return None
            if time.monotonic() > deadline:
                raise TrackingServerError(
                    f"the MLflow server pid {pid} (from {self.info_path}) is running but does "
                    f"not answer on {uri} after {self.start_timeout:.0f} s; see {self.log_path}. "
                    f"Stop it (kill {pid}) and try again."
                )
            time.sleep(0.5)
        return info

    def _command(self, port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            _HOST,
            "--port",
            str(port),
            "--backend-store-uri",
            self.store_uri,
            # Proxied artifacts: experiments get mlflow-artifacts:/ locations, clients
            # upload through the server and it writes into this folder, so workers need no
            # access to the folder and the UI serves what they logged.
            "--serve-artifacts",
            "--artifacts-destination",
            str(self.artifact_location),
            "--workers",
            "1",
        ]

    def _launch(self) -> None:
        port = self.requested_port or self.port or free_port()
        if not _port_free(port):
            raise TrackingServerError(
                f"port {port} on {_HOST} is taken by another program; choose another "
                "(profiles.local.port in mlflow.yaml, or none for any free port)"
            )
        sqlite = sqlite_path(self.store_uri)
        if sqlite is not None:
            sqlite.parent.mkdir(parents=True, exist_ok=True)
        self.artifact_location.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        if self.log_path.exists() and self.log_path.stat().st_size > 5_000_000:
            os.replace(self.log_path, self.log_path.with_suffix(".log.1"))
        with open(self.log_path, "ab") as log:
            log.write(
                f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} starting on port {port}\n".encode()
            )
            log.flush()
            t0 = time.monotonic()
            # Own session: Ctrl-C in the terminal reaches us, and we stop the server (and
            # its uvicorn child) as one process group; it also outlives us while another
            # process holds a lease.
            popen = subprocess.Popen(
                self._command(port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.state_dir,
                start_new_session=True,
            )
        self._popen, self.pid, self.port = popen, popen.pid, port
        self._pid_start = _proc_start_time(popen.pid)
        self.started = True
        info = {
            "pid": popen.pid,
            "pid_start": self._pid_start,
            "port": port,
            "uri": self.uri,
            "store_uri": self.store_uri,
            "artifact_location": str(self.artifact_location),
            "log": str(self.log_path),
            "started_at": time.time(),
            "ready": False,
        }
        # Written before readiness so that an interrupted start leaves a findable server.
        _atomic_write_json(self.info_path, info)
        try:
            self._wait_ready(popen, t0)
        except BaseException:
            self._terminate()
            self.info_path.unlink(missing_ok=True)
            raise
        self.start_seconds = time.monotonic() - t0
        _atomic_write_json(
            self.info_path, {**info, "ready": True, "start_seconds": self.start_seconds}
        )
        _log.info("MLflow server on %s started in %.1f s", self.uri, self.start_seconds)

    def _wait_ready(self, popen: subprocess.Popen[bytes], t0: float) -> None:
        while not server_healthy(self.uri, timeout=1.0):
            code = popen.poll()
            if code is not None:
                raise TrackingServerError(
                    f"the MLflow server exited with code {code} before answering on "
                    f"{self.uri}; see {self.log_path}:\n{self._log_tail()}"
                )
            if time.monotonic() - t0 > self.start_timeout:
                raise TrackingServerError(
                    f"the MLflow server did not answer {self.uri}/health within "
                    f"{self.start_timeout:.0f} s (profiles.local.start_timeout); see "
                    f"{self.log_path}:\n{self._log_tail()}"
                )
            time.sleep(0.25)

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text[-lines:])

    # -- leases ------------------------------------------------------------------------------
    def _take_lease(self) -> _Lease:
        folder = self.state_dir / _LEASES
        folder.mkdir(exist_ok=True)
        pid = os.getpid()
        path = folder / f"{pid}-{uuid.uuid4().hex[:8]}.json"
        _atomic_write_json(path, {"pid": pid, "pid_start": _proc_start_time(pid)})
        return _Lease(path, pid)

    def _live_leases(self) -> list[Path]:
        """Lease files of live processes (removing those of dead ones)."""
        live = []
        for path in sorted((self.state_dir / _LEASES).glob("*.json")):
            try:
                lease = json.loads(path.read_text())
                alive = _process_alive(int(lease["pid"]), lease.get("pid_start"))
            except (OSError, ValueError, KeyError, TypeError):
                alive = False
            if alive:
                live.append(path)
            else:
                path.unlink(missing_ok=True)
        return live

    # -- stop --------------------------------------------------------------------------------
    def stop(self, force: bool = False) -> bool:
        """Give back this object's lease; stop the server if no live process holds one.

        ``force``: stop it whoever holds leases (their logging retries until a new server
        answers on the same store), even if this object never started or reused it (then
        the server named by ``server.json``, if live). Returns whether a server was stopped.
        """
        if self._lease is None and not force:
            return False
        with _file_lock(self.state_dir / _LOCK_FILE, self.start_timeout + 30):
            if self.pid is None:
                info = self._server_info()
                if info is None:
                    return False
                self.pid, self.port = int(info["pid"]), int(info["port"])
                self._pid_start = info.get("pid_start")
            if self._lease is not None:
                self._lease.path.unlink(missing_ok=True)
                self._lease = None
            others = self._live_leases()
            if others and not force:
                _log.info("leaving the MLflow server running for %d other user(s)", len(others))
                self._reap()
                return False
            self._terminate()
            with contextlib.suppress(OSError, ValueError):
                if int(json.loads(self.info_path.read_text())["pid"]) == self.pid:
                    self.info_path.unlink()
        return True

    def _terminate(self, timeout: float = 20.0) -> None:
        """SIGTERM the server's process group, SIGKILL it after ``timeout``."""
        pid = self.pid
        if pid is None or not _process_alive(pid, self._pid_start):
            self._reap()
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._reap()
            if not _group_alive(pid):
                return
            time.sleep(0.1)
        _log.warning("MLflow server pid %s did not stop in %.0f s: killing it", pid, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        self._reap(wait=5.0)

    def _reap(self, wait: float = 0.0) -> None:
        if self._popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                if wait:
                    self._popen.wait(wait)
                else:
                    self._popen.poll()


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process of the group remains."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return not Path("/proc/self").exists()


@contextlib.contextmanager
def tracking_uri(settings: TrackingSettings) -> Iterator[str]:
    """The URI to log to, for the duration of the block.

    Local profile: starts (or reuses) the local tracking server and holds a lease on it;
    server profile: the remote URI, nothing started.
    """
    if not settings.is_local:
        assert settings.tracking_uri is not None
        yield settings.tracking_uri
        return
    with LocalTrackingServer.from_settings(settings) as server:
        yield server.uri


def worker_env(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """MLflow credential variables to hand to Ray workers (``runtime_env={"env_vars": ...}``).

    Workers on other nodes do not inherit the driver's environment; this passes the
    credentials there without writing them into any file, param or tag.
    """
    return {k: env[k] for k in (*CREDENTIAL_ENVS, "MLFLOW_TRACKING_INSECURE_TLS") if env.get(k)}


# =========================================================================================
# Environment tags
# =========================================================================================
def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def environment_tags(root: Path = PROJECT_ROOT) -> dict[str, str]:
    """``sparling.git_commit`` (``unknown`` outside a git checkout), ``sparling.git_dirty``
    and ``sparling.versions``: what a result was produced with."""

    def git(*args: str) -> str | None:
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

    commit = (git("rev-parse", "HEAD") or "").strip() or "unknown"
    tags = {TAG_COMMIT: commit}
    if commit != "unknown":
        status = git("status", "--porcelain", "--untracked-files=no")
        if status is not None:
            tags[TAG_DIRTY] = "true" if status.strip() else "false"
    versions = {d: _version(d) for d in ("sparling", "torch", "ray", "mlflow")}
    tags[TAG_VERSIONS] = " ".join(f"{k}={v}" for k, v in versions.items())
    return tags


def experiment_url(uri: str, experiment_id: str) -> str:
    """The UI page of an experiment's runs table (in the UI's model-training mode)."""
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs?{UI_QUERY}"


def run_ui(work_dir: Path, host: str = "127.0.0.1", port: int | None = None, **kwargs: Any) -> None:
    """``sparling ui``: serve the MLflow UI until Ctrl-C (see :func:`pipelines.ui.run_ui`)."""
    from pipelines.ui import run_ui as serve

    serve(work_dir, host, port, **kwargs)


def run_name(method: str, seed: int) -> str:
    """The display name of a child run: ``"sparling seed=0"``, ``"sparling-st seed=1"``."""
    return f"{method} seed={seed}"


# =========================================================================================
# The run API
# =========================================================================================
def _quote(value: str) -> str:
    """A string literal for an MLflow filter (which has no escapes inside quotes)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise TrackingError(f"a name may hold ' or \" but not both: {value!r}")


def _param_value(value: Any) -> str:
    """MLflow param text: strings as they are, everything else as JSON (``null``, ``true``,
    ``{}``), cut to MLflow's limit the same way every time (so a resume logs equal values)."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    if len(text) > MAX_PARAM_VALUE:
        marker = "...[truncated]"
        text = text[: MAX_PARAM_VALUE - len(marker)] + marker
    return text


def _tag_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_TAG_VALUE else text[: MAX_TAG_VALUE - 3] + "..."


def _check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY:
        raise TrackingError(f"MLflow keys are 1 to {MAX_KEY} characters: {key[:80]!r}")
    return key


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

    def _find_or_create(
        self, experiment_id: str, filter_string: str, create: Any
    ) -> tuple[Run, bool]:
        found = self._search([experiment_id], filter_string)
        if found:
            return _oldest(found), True
        mine: Run = create()
        found = self._search([experiment_id], filter_string)
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
        filter_string = f"tags.`{TAG_KIND}` = 'sweep' and tags.`{TAG_SWEEP}` = {_quote(sweep_name)}"
        all_tags = {**scrub(dict(tags or {})), TAG_KIND: "sweep", TAG_SWEEP: sweep_name}

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
            f"tags.`{TAG_PARENT}` = {_quote(parent_id)} and tags.`{TAG_RUN_ID}` = {_quote(key)}"
        )
        all_tags = {
            **scrub(dict(tags or {})),
            TAG_PARENT: parent_id,
            TAG_KIND: "run",
            TAG_RUN_ID: key,
        }

        def create() -> Run:
            return self.client.create_run(experiment_id, tags=_tags(all_tags), run_name=name)

        run, existed = self._find_or_create(experiment_id, filter_string, create)
        self._log_params(run, params)
        return str(run.info.run_id), existed

    def _log_params(self, run: Run, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        have = dict(run.data.params) if run.data.params else {}
        todo: list[Param] = []
        for k, v in scrub(dict(params)).items():
            value = _param_value(v)
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
            todo.append(Param(_check_key(k), value))
        for i in range(0, len(todo), _PARAMS_PER_BATCH):
            self.client.log_batch(run.info.run_id, params=todo[i : i + _PARAMS_PER_BATCH])

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
        for i in range(0, len(items), _PARAMS_PER_BATCH):
            self.client.log_batch(run_id, tags=items[i : i + _PARAMS_PER_BATCH])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log final metrics from the driver in one batch (workers use :class:`MetricLogger`)."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(_check_key(k), float(v), ts, int(step)) for k, v in metrics.items()]
        for i in range(0, len(items), _METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=items[i : i + _METRICS_PER_BATCH])

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
        """Upload a folder's files into the run (through the server's artifact proxy)."""
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_artifact(self, run_id: str, local_file: Path, artifact_path: str | None = None) -> None:
        """Upload one file into the run."""
        self.client.log_artifact(run_id, str(local_file), artifact_path)

    def children(self, parent_id: str) -> list[Run]:
        """The parent's active child runs, oldest first."""
        experiment_id = self.client.get_run(parent_id).info.experiment_id
        return self._search([experiment_id], f"tags.`{TAG_PARENT}` = {_quote(parent_id)}")

    def find_child(self, parent_id: str, key: str) -> Run | None:
        """The child run with ``sparling.run_id == key`` under the parent, if any."""
        runs = [r for r in self.children(parent_id) if r.data.tags.get(TAG_RUN_ID) == key]
        return _oldest(runs) if runs else None

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

    def find_parent(self, experiment_name: str, sweep_name: str) -> Run | None:
        """The parent run of a sweep in an experiment, if both exist."""
        exp = self.client.get_experiment_by_name(experiment_name)
        if exp is None:
            return None
        runs = self._search(
            [exp.experiment_id],
            f"tags.`{TAG_KIND}` = 'sweep' and tags.`{TAG_SWEEP}` = {_quote(sweep_name)}",
        )
        return _oldest(runs) if runs else None


def _tags(tags: Mapping[str, Any]) -> dict[str, str]:
    return {_check_key(k): _tag_value(v) for k, v in tags.items()}


def _oldest(runs: list[Run]) -> Run:
    return min(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


# =========================================================================================
# The worker-side metric logger
# =========================================================================================
class _Transient(Exception):
    """A send that may succeed later (connection refused, timeout, 429/5xx)."""


_RETRY_STATUS = (429, 500, 502, 503, 504)


class _Rest:
    """Single-attempt REST calls; retrying is the caller's (MLflow's client would retry one
    call for about four minutes, blocking the training loop)."""

    def __init__(self, uri: str, timeout: float) -> None:
        from mlflow.utils.credentials import get_default_host_creds

        # Credentials come from MLflow's environment variables here, as in MlflowClient.
        self.creds = get_default_host_creds(uri)
        self.timeout = timeout

    def call(self, method: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        from mlflow.exceptions import InvalidUrlException, MlflowException
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        kwargs: dict[str, Any] = {"params": body} if method == "GET" else {"json": body}
        try:
            response = http_request(
                self.creds,
                endpoint,
                method,
                max_retries=0,
                backoff_factor=0,
                backoff_jitter=0,
                raise_on_status=False,
                timeout=self.timeout,
                **kwargs,
            )
        except InvalidUrlException:
            raise
        except MlflowException as e:  # connection refused/reset, timeout
            raise _Transient(str(e)) from e
        if response.status_code in _RETRY_STATUS:
            raise _Transient(f"HTTP {response.status_code} from {endpoint}")
        verify_rest_response(response, endpoint)
        data: dict[str, Any] = json.loads(response.text or "{}")
        return data


def append_to_spool(path: Path, metrics: Mapping[str, float], step: int, timestamp_ms: int) -> None:
    """Append ``metrics`` at ``step`` to a metric spool (JSON lines), the file a
    :class:`MetricLogger` on the same run and spool sends first. Needs no MLflow: a
    machine without it (the local executor with tracking off) spools this way too."""
    with open(path, "a") as f:
        for key, value in metrics.items():
            point = {"k": key, "v": float(value), "t": int(timestamp_ms), "s": int(step)}
            f.write(json.dumps(point) + "\n")


class MetricLogger:
    """Metrics of one run, sent in batches from a background thread; nothing is lost.

    ``log()`` only queues (a training loop never waits on the server). The sender thread
    posts ``runs/log-batch`` and, on connection errors, timeouts or 429/5xx, keeps the
    points and retries with exponential backoff (``max_backoff`` at most) until the server
    answers again, e.g. after a restart on the same store and port. ``flush(timeout)``
    waits until everything queued was accepted and raises :class:`TrackingError` if it
    could not be. A permanent error (unknown run, invalid value) is raised by the next
    ``log()``/``flush()``. Re-sending a batch is harmless: the server drops points equal
    in key, step, timestamp and value.

    De-duplication: at construction the run's existing metric history is read once, and a
    ``(key, step)`` already present (or already queued) is dropped, so a resumed worker
    that re-reports the validations after its last checkpoint adds no duplicate points.

    ``spool``: a JSON-lines file where every queued point is also written until the server
    accepted it; a new logger on the same run and spool sends what a crashed one left.
    """

    def __init__(
        self,
        uri: str,
        run_id: str,
        *,
        spool: Path | None = None,
        request_timeout: float = 10.0,
        max_backoff: float = 10.0,
        connect_timeout: float = 300.0,
    ) -> None:
        self.uri = uri
        self.run_id = run_id
        self.spool = Path(spool) if spool is not None else None
        self.max_backoff = max_backoff
        self._rest = _Rest(uri, request_timeout)
        self._cond = threading.Condition()
        self._buffer: list[Metric] = []
        self._seen: set[tuple[str, int]] = set()
        self._error: BaseException | None = None
        self._last_transient: str | None = None
        self._wake = False
        self._stop = False
        self.sent = 0
        """Points the server accepted."""
        self.skipped = 0
        """Points dropped as already present in the run (or already queued)."""
        self._load_history(connect_timeout)
        self._replay_spool()
        self._thread = threading.Thread(
            target=self._run, name=f"mlflow-metrics-{run_id[:8]}", daemon=True
        )
        self._thread.start()

    # -- construction ------------------------------------------------------------------------
    def _retrying(self, what: str, fn: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        delay = 0.25
        while True:
            try:
                return fn()
            except _Transient as e:
                if time.monotonic() + delay > deadline:
                    raise TrackingError(
                        f"{what}: the MLflow server at {redact_uri(self.uri)} did not answer "
                        f"for {timeout:.0f} s ({e})"
                    ) from e
                time.sleep(delay)
                delay = min(self.max_backoff, delay * 2)

    def _load_history(self, timeout: float) -> None:
        def read() -> None:
            run = self._rest.call("GET", "/api/2.0/mlflow/runs/get", {"run_id": self.run_id})
            keys = [m["key"] for m in run.get("run", {}).get("data", {}).get("metrics", [])]
            seen: set[tuple[str, int]] = set()
            for key in keys:
                body: dict[str, Any] = {"run_id": self.run_id, "metric_key": key}
                while True:
                    page = self._rest.call("GET", "/api/2.0/mlflow/metrics/get-history", body)
                    seen.update((key, int(m.get("step", 0))) for m in page.get("metrics", []))
                    if not page.get("next_page_token"):
                        break
                    body = {**body, "page_token": page["next_page_token"]}
            self._seen = seen

        from mlflow.exceptions import MlflowException

        try:
            self._retrying(f"reading the metrics of run {self.run_id}", read, timeout)
        except MlflowException as e:  # refused for good: unknown run, no permission...
            raise TrackingError(
                f"cannot log to run {self.run_id} on {redact_uri(self.uri)}: {e.message}"
            ) from e

    def _replay_spool(self) -> None:
        from mlflow.entities import Metric

        if self.spool is None or not self.spool.exists():
            return
        for line in self.spool.read_text().splitlines():
            try:
                r = json.loads(line)
                metric = Metric(r["k"], float(r["v"]), int(r["t"]), int(r["s"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash
            if (metric.key, metric.step) in self._seen:
                continue
            self._seen.add((metric.key, metric.step))
            self._buffer.append(metric)

    # -- the caller's side -------------------------------------------------------------------
    def log(self, metrics: Mapping[str, float], step: int, timestamp_ms: int | None = None) -> int:
        """Queue ``metrics`` at ``step``; returns how many points were queued (the others
        were already in the run). Never blocks on the network."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        new = []
        with self._cond:
            self._raise_error()
            for key, value in metrics.items():
                if (key, int(step)) in self._seen:
                    self.skipped += 1
                    continue
                self._seen.add((key, int(step)))
                new.append(Metric(_check_key(key), float(value), ts, int(step)))
            if not new:
                return 0
            if self.spool is not None:
                append_to_spool(self.spool, {m.key: m.value for m in new}, int(step), ts)
            self._buffer.extend(new)
            self._cond.notify_all()
        return len(new)

    @property
    def pending(self) -> int:
        """Points queued and not yet accepted by the server."""
        with self._cond:
            return len(self._buffer)

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every queued point was accepted (retrying now, not after the backoff)."""
        with self._cond:
            self._wake = True
            self._cond.notify_all()
            done = self._cond.wait_for(lambda: not self._buffer or self._error, timeout)
            self._raise_error()
            if not done:
                where = f"; they are kept in {self.spool}" if self.spool else ""
                raise TrackingError(
                    f"{len(self._buffer)} metric points of run {self.run_id} could not be sent "
                    f"to {redact_uri(self.uri)} within {timeout:.0f} s "
                    f"(last error: {self._last_transient}){where}"
                )

    def close(self, timeout: float = 60.0) -> None:
        """Flush, then stop the sender thread (it stops even if the flush failed)."""
        try:
            self.flush(timeout)
        finally:
            with self._cond:
                self._stop = True
                self._cond.notify_all()
            self._thread.join(timeout=self._rest.timeout + 5)

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise TrackingError(
                f"MLflow refused metrics of run {self.run_id}: {self._error}"
            ) from self._error

    # -- the sender thread -------------------------------------------------------------------
    def _send(self, batch: list[Metric]) -> None:
        from mlflow.protos.service_pb2 import LogBatch
        from mlflow.utils.proto_json_utils import message_to_json

        body = json.loads(
            message_to_json(LogBatch(run_id=self.run_id, metrics=[m.to_proto() for m in batch]))
        )
        self._rest.call("POST", "/api/2.0/mlflow/runs/log-batch", body)

    def _run(self) -> None:
        failures = 0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._buffer or self._stop)
                if self._stop:
                    return
                batch = list(self._buffer[:_METRICS_PER_BATCH])
            try:
                self._send(batch)
            except _Transient as e:
                failures += 1
                delay = min(self.max_backoff, 0.25 * 2 ** (failures - 1))
                with self._cond:
                    self._last_transient = str(e)
                    self._cond.wait_for(lambda: self._wake or self._stop, delay)
                    self._wake = False
                continue
            except Exception as e:  # refused for good: report it to the caller
                with self._cond:
                    self._error = e
                    self._cond.notify_all()
                return
            failures = 0
            with self._cond:
                del self._buffer[: len(batch)]
                self.sent += len(batch)
                if not self._buffer and self.spool is not None:
                    self.spool.write_text("")  # everything is on the server now
                self._cond.notify_all()

    # -- artifacts ---------------------------------------------------------------------------
    def log_artifacts(
        self, local_dir: Path, artifact_path: str | None = None, timeout: float = 300.0
    ) -> None:
        """Upload a folder's files into the run (re-uploading is harmless), retrying with
        backoff while the server is unreachable, for up to ``timeout`` seconds."""
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException
        from requests.exceptions import RequestException

        client = MlflowClient(tracking_uri=self.uri)
        deadline = time.monotonic() + timeout
        delay = 0.5
        while True:
            try:
                client.log_artifacts(self.run_id, str(local_dir), artifact_path)
                return
            except (MlflowException, RequestException, OSError) as e:
                if isinstance(e, MlflowException) and e.error_code in (
                    "RESOURCE_DOES_NOT_EXIST",
                    "INVALID_PARAMETER_VALUE",
                ):
                    raise
                if isinstance(e, FileNotFoundError) or time.monotonic() + delay > deadline:
                    raise TrackingError(
                        f"could not upload {local_dir} to run {self.run_id}: {e}"
                    ) from e
                time.sleep(delay)
                delay = min(self.max_backoff, delay * 2)
