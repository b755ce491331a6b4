"""The worker-side metric logger (:class:`MetricLogger`) and its on-disk spool.

Buffered ``log_batch`` sends from a background thread that retries with backoff until
the server answers (it may restart in the middle of a run), an optional on-disk spool
(:func:`append_to_spool`) that survives a worker crash, and de-duplication of
``(key, step)`` points already in the run, so a resumed run never doubles a curve.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.tracking.errors import TrackingError
from pipelines.tracking.limits import METRICS_PER_BATCH, check_key
from pipelines.tracking.redaction import redact_uri

if TYPE_CHECKING:
    from mlflow.entities import Metric


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
                new.append(Metric(check_key(key), float(value), ts, int(step)))
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
                batch = list(self._buffer[:METRICS_PER_BATCH])
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
