"""Tracking settings (:func:`load_settings`): where sweeps and runs are tracked.

``mlflow.yaml`` (or the built-in defaults) has two profiles. ``local`` (the default) keeps
a SQLite store and an artifact folder under the work dir, ``<work_dir>/mlflow/``: nothing
to install or start by hand (a :class:`~pipelines.tracking.server.LocalTrackingServer`
owns the store). ``server`` logs to a tracking server named by ``MLFLOW_TRACKING_URI``
(e.g. ``http://mlflow.example:5000``). Credentials are never read from a file: MLflow's
client takes them from ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (or
``MLFLOW_TRACKING_TOKEN``), and :func:`worker_env` hands them to Ray workers.
"""

from __future__ import annotations

import os
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.tracking.errors import TrackingConfigError
from pipelines.tracking.redaction import has_userinfo_password, is_secret_key, redact_uri
from sparling.errors import format_validation_errors
from sparling.fileio import YAMLLoadError, load_yaml_mapping

#: The settings file's name, looked for in the work dir, beside it and in the current folder.
SETTINGS_FILE = "mlflow.yaml"

PROFILE_ENV = "SPARLING_MLFLOW_PROFILE"
CONFIG_ENV = "SPARLING_MLFLOW_CONFIG"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
#: Read by MLflow's own client to log in (never from a file); :func:`worker_env` passes
#: them on to Ray workers.
CREDENTIAL_ENVS = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)


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


#: Seconds a tracking server of the server profile has to accept a connection.
SERVER_ANSWER_TIMEOUT_S = 10.0

#: Optimizer steps between two ``train/`` points of a run, by default.
DEFAULT_TRAIN_EVERY_STEPS = 50


class _Logging(_Section):
    train_every_steps: int = Field(DEFAULT_TRAIN_EVERY_STEPS, ge=1)
    """Optimizer steps between two ``train/`` points (loss, learning rate, gradient norm)."""
    system_metrics: bool = True
    """MLflow's system metrics (``system/``: CPU, memory, disk, network; GPU where present)
    of each training process, on its run."""
    system_metrics_interval: float = Field(10.0, gt=0)
    """Seconds between two system metrics samples."""


class _SettingsFile(_Section):
    profile: Literal["local", "server"] = "local"
    experiment_name: str = "sparling-{sweep}"
    profiles: _Profiles = Field(default_factory=_Profiles)
    logging: _Logging = Field(default_factory=_Logging)


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
    train_every_steps: int = DEFAULT_TRAIN_EVERY_STEPS
    """Optimizer steps between two ``train/`` points of a run (``logging`` in the file)."""
    system_metrics: bool = True
    """Whether each training process logs MLflow's system metrics to its run."""
    system_metrics_interval: float = 10.0
    """Seconds between two system metrics samples."""
    also_found: tuple[str, ...] = ()
    """Other ``mlflow.yaml`` files the search found but did not use (a later place in
    :func:`find_settings_file`'s order); the commands say so."""

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

    def run_options(self) -> dict[str, Any]:
        """What each run's worker needs of these settings besides the URI (plain values,
        passed to the worker in its tracking dict)."""
        return {
            "train_every_steps": self.train_every_steps,
            "system_metrics": self.system_metrics,
            "system_metrics_interval": self.system_metrics_interval,
        }

    def check_reachable(self, timeout: float = SERVER_ANSWER_TIMEOUT_S) -> None:
        """Refuse a server profile whose ``http(s)://`` tracking server accepts no
        connection within ``timeout`` seconds, at once and before anything is written
        (MLflow's client retries such a server for minutes). Other URIs (a local server of
        the local profile, ``file:``, ``databricks``) are not checked here."""
        import socket
        from urllib.parse import urlsplit

        if self.is_local or not self.tracking_uri:
            return
        parts = urlsplit(self.tracking_uri)
        if parts.scheme not in ("http", "https"):
            return
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise TrackingConfigError(
                f"tracking URI {redact_uri(self.tracking_uri)} has no valid port "
                f"(settings: {self.source})"
            ) from None
        host = parts.hostname or ""
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
        except OSError as e:
            cause = e.strerror or str(e) or type(e).__name__
            raise TrackingConfigError(
                f"the MLflow tracking server {redact_uri(self.tracking_uri)} does not answer "
                f"({cause}; tried for up to {timeout:.0f} s): start it, or correct "
                "MLFLOW_TRACKING_URI (or profiles.server.tracking_uri in the settings: "
                f"{self.source}), or pass --no-tracking; nothing was started"
            ) from None

    def describe(self) -> str:
        """One line for people: the profile and where runs and artifacts go (no secrets)."""
        if self.is_local:
            return (
                f"profile local: store {self.store_uri}, artifacts {self.artifact_location} "
                f"(settings: {self.source})"
            )
        where = redact_uri(self.tracking_uri or "?")
        return f"profile server: {where} (settings: {self.source})"

    def summary(self, uri: str | None = None, experiment: str | None = None) -> str:
        """What a command prints about where it tracks: the settings file, the tracking
        URI (``uri``: the local server's, when one runs) and the experiment, then any
        other settings file found and not used, e.g. ``MLflow: settings /p/mlflow.yaml
        (next to the work dir); tracking URI http://127.0.0.1:5000 (local server, store
        sqlite:///...); experiment 'sparling-quickstart'``."""
        if self.is_local:
            where = (
                f"{redact_uri(uri)} (local server, store {self.store_uri})"
                if uri
                else f"a local server on 127.0.0.1, started when needed, store {self.store_uri}"
            )
        else:
            where = redact_uri(self.tracking_uri or "?")
        text = f"MLflow: settings {self.source}; tracking URI {where}"
        if experiment is not None:
            text += f"; experiment {experiment!r}"
        if self.also_found:
            text += f"; also found, not used: {', '.join(self.also_found)}"
        return text


_BUILTIN = "built-in defaults"


def settings_candidates(work_dir: Path, cwd: Path | None = None) -> list[tuple[Path, str]]:
    """Where ``mlflow.yaml`` is looked for when no file is named, in order: the work dir,
    the folder holding it (``sparling-work/``'s project folder) and the current folder;
    each with how to say where it was found."""
    work_dir = Path(work_dir).expanduser().resolve()
    cwd = (cwd or Path.cwd()).resolve()
    places = [
        (work_dir / SETTINGS_FILE, "in the work dir"),
        (work_dir.parent / SETTINGS_FILE, "next to the work dir"),
        (cwd / SETTINGS_FILE, "in the current folder"),
    ]
    seen: set[Path] = set()
    out = []
    for path, how in places:
        if path not in seen:
            seen.add(path)
            out.append((path, how))
    return out


def find_settings_file(
    work_dir: Path, path: Path | None = None, env: Mapping[str, str] = os.environ
) -> tuple[Path | None, str, tuple[str, ...]]:
    """The settings file to read: ``(file or None for the built-in defaults, how it was
    chosen, the other files found and not used)``.

    ``path`` (``--mlflow-config``) first, then ``$SPARLING_MLFLOW_CONFIG``: either must
    exist. Otherwise the first ``mlflow.yaml`` of :func:`settings_candidates`; the later
    ones that exist (and hold something else) are returned as not used, so that a
    command can say which file it read and which it did not.
    """
    named, how = (path, "--mlflow-config") if path is not None else (None, "")
    if named is None and env.get(CONFIG_ENV):
        named, how = Path(env[CONFIG_ENV]), f"${CONFIG_ENV}"
    if named is not None:
        named = Path(named).expanduser()
        if not named.is_file():
            what = "is a folder" if named.is_dir() else "does not exist"
            raise TrackingConfigError(f"MLflow settings file not found: {named} ({how}; it {what})")
        return named, how, ()
    found = [(p, h) for p, h in settings_candidates(work_dir) if p.is_file()]
    if not found:
        return None, _BUILTIN, ()
    (chosen, how), rest = found[0], found[1:]
    text = _read_bytes(chosen)
    unused = tuple(str(p) for p, _ in rest if _read_bytes(p) != text)
    return chosen, how, unused


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def load_settings(
    work_dir: Path,
    path: Path | None = None,
    env: Mapping[str, str] = os.environ,
) -> TrackingSettings:
    """Tracking settings for a work dir.

    The file is ``path`` (``--mlflow-config``), else ``$SPARLING_MLFLOW_CONFIG``, else the
    first ``mlflow.yaml`` in the work dir, next to it (in the folder holding it) or in the
    current folder, else the built-in defaults (a local SQLite store and artifact folder
    under ``<work_dir>/mlflow/``); :func:`find_settings_file`. Relative paths in the file
    resolve against ``work_dir``.

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
    file, how, also_found = find_settings_file(work_dir, path, env)
    # ``source`` names the file in error messages; ``described`` also says how it was found
    source, raw = _read_settings_file(file)
    _refuse_credentials(raw, source)
    try:
        parsed = _SettingsFile.model_validate(raw)
    except ValidationError as e:
        problems = format_validation_errors(e, model=_SettingsFile)
        raise TrackingConfigError(
            f"{file}: invalid MLflow settings: {'; '.join(problems)}"
        ) from None

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
        if has_userinfo_password(env_uri):
            raise TrackingConfigError(_credential_message(f"{TRACKING_URI_ENV} holds a password"))
        if profile == "local" and _is_remote_uri(env_uri):
            if PROFILE_ENV in overrides:
                # Asked for "local" explicitly: a globally exported server URI is not ours.
                overrides[-1] = f"{TRACKING_URI_ENV} ignored"
                env_uri = ""
            else:
                profile = "server"  # "log there": a server already runs at that URI
    described = (f"{source} ({how})" if file is not None else source) + (
        f" + {', '.join(overrides)}" if overrides else ""
    )
    run_logging: dict[str, Any] = parsed.logging.model_dump()

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
            also_found=also_found,
            **run_logging,
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
        also_found=also_found,
        **run_logging,
    )


def _read_settings_file(path: Path | None) -> tuple[str, dict[str, Any]]:
    if path is None:
        return _BUILTIN, {}
    try:
        loaded = load_yaml_mapping(
            path,
            "MLflow settings",
            kind="MLflow settings file",
            example="profile: local",
            allow_empty=True,  # the file is optional: an empty one is the defaults
        )
    except YAMLLoadError as e:
        raise TrackingConfigError(" ".join(str(e).split())) from None
    except OSError as e:
        raise TrackingConfigError(
            f"MLflow settings file {path} cannot be read: {e.strerror or e}"
        ) from None
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
    elif isinstance(raw, str) and has_userinfo_password(raw):
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


def missing_local_store(settings: TrackingSettings) -> Path | None:
    """The local profile's SQLite store file when it does not exist yet (nothing was
    tracked there: reading it must not start a server on a new, empty store), else None."""
    store = sqlite_path(settings.store_uri) if settings.is_local else None
    return store if store is not None and not store.is_file() else None


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


def worker_env(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """MLflow credential variables to hand to Ray workers (``runtime_env={"env_vars": ...}``).

    Workers on other nodes do not inherit the driver's environment; this passes the
    credentials there without writing them into any file, param or tag.
    """
    return {k: env[k] for k in (*CREDENTIAL_ENVS, "MLFLOW_TRACKING_INSECURE_TLS") if env.get(k)}
