"""The local tracking server (:class:`LocalTrackingServer`, :func:`tracking_uri`).

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
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.tracking.errors import TrackingConfigError, TrackingError, TrackingServerError
from pipelines.tracking.procs import (
    LOOPBACK,
    cmdline,
    free_port,
    group_alive,
    port_free,
    proc_start_time,
    process_alive,
    server_healthy,
)
from pipelines.tracking.settings import TrackingSettings, sqlite_path
from sparling.fileio import LockTimeout, atomic_write_json, file_lock

_log = logging.getLogger(__name__)

SERVER_FILE = "server.json"
SERVER_LOG = "server.log"
_LOCK_FILE = "server.lock"
_LEASES = "leases"


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


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float) -> Iterator[None]:
    """An exclusive lock (released if the process dies), waiting up to ``timeout``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with file_lock(path, timeout=timeout):
            yield
    except LockTimeout:
        raise TrackingServerError(
            f"another process holds {path} for more than {timeout:.0f} s "
            "(starting or stopping the local MLflow server)"
        ) from None


def _atomic_write_json(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write_json(path, dict(data), indent=2)


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
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.state_dir / SERVER_LOG

    @property
    def info_path(self) -> Path:
        return self.state_dir / SERVER_FILE

    @property
    def running(self) -> bool:
        return self.pid is not None and process_alive(self.pid, self._pid_start)

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
        if not self.state_dir.exists():
            # no server of this store can be running: a port taken by another program is
            # refused before the store's folders are made
            self._refuse_taken_port(self.requested_port)
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
        if not process_alive(pid, info.get("pid_start")) or "mlflow" not in cmdline(pid):
            _log.info("ignoring stale %s (pid %s is gone)", self.info_path, pid)
            return None
        return info

    def _live_server(self) -> dict[str, Any] | None:
        """The server described by ``server.json`` if it is alive, ours and answering."""
        info = self._server_info()
        if info is None:
            return None
        pid, port = int(info["pid"]), int(info["port"])
        uri = f"http://{LOOPBACK}:{port}"
        deadline = time.monotonic() + self.start_timeout
        # Alive and ours: it may still be starting (its starter was interrupted) or busy.
        while not server_healthy(uri):
            if not process_alive(pid, info.get("pid_start")):
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
            LOOPBACK,
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

    @staticmethod
    def _refuse_taken_port(port: int | None) -> None:
        if port is not None and not port_free(port):
            raise TrackingServerError(
                f"port {port} on {LOOPBACK} is taken by another program; choose another "
                "(profiles.local.port in mlflow.yaml, or none for any free port)"
            )

    def _launch(self) -> None:
        port = self.requested_port or self.port or free_port()
        self._refuse_taken_port(port)
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
        self._pid_start = proc_start_time(popen.pid)
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
        _atomic_write_json(path, {"pid": pid, "pid_start": proc_start_time(pid)})
        return _Lease(path, pid)

    def _live_leases(self) -> list[Path]:
        """Lease files of live processes (removing those of dead ones)."""
        live = []
        for path in sorted((self.state_dir / _LEASES).glob("*.json")):
            try:
                lease = json.loads(path.read_text())
                alive = process_alive(int(lease["pid"]), lease.get("pid_start"))
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
        if pid is None or not process_alive(pid, self._pid_start):
            self._reap()
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._reap()
            if not group_alive(pid):
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


def running_server_uri(settings: TrackingSettings) -> str | None:
    """The URI of the live local server on the settings' store, if one answers now (nothing
    is started); ``None`` on the server profile or when none runs."""
    if not settings.is_local:
        return None
    info = LocalTrackingServer.from_settings(settings)._server_info()
    if info is None:
        return None
    uri = f"http://{LOOPBACK}:{int(info['port'])}"
    return uri if server_healthy(uri) else None


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
