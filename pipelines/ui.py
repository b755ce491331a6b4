"""``sparling ui``: the MLflow UI for the work dir's runs, on 127.0.0.1.

The UI is the local tracking server itself (it serves the web app, the REST API and the
artifacts), so while a sweep runs its server is reused, and after it ends one is started
on the store. The UI holds a lease on the server: a sweep that ends leaves it running
for the UI, and Ctrl-C (or SIGTERM) stops it unless a sweep still logs to it.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from pipelines.tracking.errors import TrackingConfigError
from pipelines.tracking.procs import server_healthy
from pipelines.tracking.redaction import redact_uri
from pipelines.tracking.server import LocalTrackingServer
from pipelines.tracking.settings import load_settings
from pipelines.tracking.tags import UI_QUERY, experiment_url

_LOOPBACK = ("127.0.0.1", "localhost")


def run_ui(
    work_dir: Path,
    host: str = "127.0.0.1",
    port: int | None = None,
    *,
    settings_path: Path | None = None,
    env: Mapping[str, str] = os.environ,
    out: Callable[[str], None] = print,
    stop: threading.Event | None = None,
    poll_seconds: float = 2.0,
) -> None:
    """Serve the MLflow UI for ``work_dir`` until Ctrl-C, SIGTERM or ``stop`` is set.

    Prints the address to open and a link per experiment. Reuses the live local server
    of the store if there is one (``port`` is then that server's), else starts
    ``mlflow server`` on the local store (on ``port``, or a free one). If the server goes
    away (its process was killed), it starts another on the same port. On the ``server``
    profile there is nothing to start: it prints the server's address and returns.
    Raises :class:`~pipelines.tracking.errors.TrackingError` (a ``SparlingError``) on bad
    settings or a server that does not start.
    """
    if host not in _LOOPBACK:
        raise TrackingConfigError(
            f"sparling ui serves on 127.0.0.1 only (got host {host!r}); a shared tracking "
            "server belongs in infra/ and is used through the 'server' profile"
        )
    settings = load_settings(Path(work_dir), settings_path, env)
    if not settings.is_local:
        uri = redact_uri(settings.tracking_uri or "")
        out(f"MLflow UI: {uri}/#/experiments?{UI_QUERY}  ({settings.describe()})")
        return
    server = LocalTrackingServer.from_settings(settings, port=port)
    with _terminate_as_interrupt():
        try:
            server.start()
            _announce(server, port, out)
            wait = stop.wait if stop is not None else threading.Event().wait
            while not wait(poll_seconds):
                if not server.running and not server_healthy(server.uri):
                    out("the MLflow server stopped; starting it again")
                    server.stop()
                    server.start()
                    _announce(server, port, out)
        except KeyboardInterrupt:
            out("stopping the MLflow UI")
        finally:
            server.stop()


#: Flags for driving Debian's Chromium headless against the UI on a closed network: no
#: sandbox (root in CI), and none of the background connections it would make at start.
HEADLESS_CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP stop the UI (so Ctrl-C, ``kill`` or a closed terminal all
    stop the server); only possible, and only needed, in the main thread. SIGINT is set
    explicitly because a process started in the background by a non-interactive shell
    inherits it as *ignored*, and Ctrl-C would then do nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, interrupt) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _announce(server: LocalTrackingServer, port: int | None, out: Callable[[str], None]) -> None:
    how = (
        f"started in {server.start_seconds:.1f} s"
        if server.started and server.start_seconds is not None
        else f"reusing the running server, pid {server.pid}"
    )
    if port is not None and server.port != port and not server.started:
        how += f"; port {port} not used: the store's server already runs on {server.port}"
    out(f"MLflow UI: {server.uri}/#/experiments?{UI_QUERY}  ({how}; Ctrl-C to stop)")
    out(f"  store {server.store_uri}, artifacts {server.artifact_location}")
    for name, url in _experiment_links(server.uri):
        out(f"  {name}: {url}")


def _experiment_links(uri: str) -> list[tuple[str, str]]:
    """``(name, runs page)`` of each experiment holding runs (best effort: never fails)."""
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        return [
            (e.name, experiment_url(uri, e.experiment_id))
            for e in client.search_experiments(max_results=50)
            if e.name != "Default"
        ]
    except Exception:  # the links are a convenience: the address above is what matters
        return []
