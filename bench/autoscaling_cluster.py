"""A Ray cluster on this machine whose worker nodes come and go with demand: Ray's fake
multi-node provider, driven by Ray's own autoscaler (v2, as KubeRay runs it, or v1, as
``ray up`` runs it).

Each node the autoscaler launches is a real raylet on this machine advertising *logical*
resources (``{"CPU": 1}`` need not be a real core), so an autoscaling sweep can be
tried, timed and tested on a laptop or a 2-core CI machine::

    with autoscaling_cluster({"CPU": 1}, max_nodes=3) as cluster:
        subprocess.run([... "sparling", "sweep", ...], env={**os.environ, **cluster.env})
        cluster.status()     # nodes alive and launched so far, pending demand

Every process runs on 127.0.0.1 under a temp dir of the cluster's own, and teardown
ends only those processes (never ``ray stop``, which would end every Ray instance on the
machine). ``max_nodes=0`` with ``head_resources={"CPU": 1}`` is a fixed one-node
cluster, for comparison.

Used by ``bench/bench_autoscale.py`` and ``tests/pipelines/executors/test_ray_autoscaling.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The node id the fake provider gives the head (``ray.autoscaler._private.fake_multi_node``).
FAKE_HEAD_NODE_ID = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"
#: Ray's fake multi-node provider, named as an external module: the short name
#: ``fake_multinode`` loads a defaults file that the Ray wheel does not ship.
FAKE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"
#: The worker node type's name in the generated autoscaling config.
WORKER_TYPE = "worker"
#: Where autoscaler v1 keeps the last ``request_resources`` bundles (Ray's internal KV).
V1_REQUEST_KEY = b"autoscaler_resource_request"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cluster_config(
    gcs_address: str,
    node_resources: Mapping[str, float],
    max_nodes: int,
    *,
    head_resources: Mapping[str, float],
    idle_timeout_s: float,
    autoscaler_v2: bool,
) -> dict[str, Any]:
    """The autoscaling config for ``ray start --head --autoscaling-config``: the fake
    provider, a head with ``head_resources`` and up to ``max_nodes`` worker nodes of
    ``node_resources``, none at the start."""
    provider: dict[str, Any] = {
        "type": "external",
        "module": FAKE_PROVIDER,
        "gcs_address": gcs_address,
        "use_node_id_as_ip": True,
        "disable_node_updaters": True,
        "disable_launch_config_check": True,
    }
    if autoscaler_v2:
        provider.update(launch_multiple=True, head_node_id=FAKE_HEAD_NODE_ID)
    return {
        "cluster_name": "fake-autoscaling",
        "max_workers": max_nodes,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_s / 60.0,
        "provider": provider,
        "auth": {"ssh_user": "ray"},
        "available_node_types": {
            "ray.head.default": {
                "resources": dict(head_resources),
                "node_config": {},
                "max_workers": 0,
            },
            WORKER_TYPE: {
                "resources": dict(node_resources),
                "node_config": {},
                "min_workers": 0,
                "max_workers": max_nodes,
            },
        },
        "head_node_type": "ray.head.default",
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


@dataclass
class AutoscalingCluster:
    """A started cluster: its address, the environment a driver needs to reach it, and
    what its GCS says (read without connecting as a driver)."""

    address: str
    temp_dir: Path
    autoscaler_v2: bool

    @property
    def env(self) -> dict[str, str]:
        """What a driver process (``sparling sweep``) needs in its environment: the
        address, and Ray's single-machine mode, without which Ray would replace the
        loopback address by the machine's own, where nothing of this cluster listens."""
        return {
            "RAY_ADDRESS": self.address,
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    def _gcs(self) -> Any:
        from ray._raylet import GcsClient

        return GcsClient(address=self.address)

    def status(self) -> dict[str, Any]:
        """A snapshot: ``alive`` (worker nodes alive now), ``idle`` (those of them using
        nothing), ``launched`` (worker nodes that have joined since the start, gone or
        not), ``pending`` (bundles of pending tasks and actors), ``pending_pgs`` (pending
        placement groups) and ``requested`` (the bundles of the standing
        ``request_resources`` request: in Ray 2.60 Ray Train's registrations of its
        started runs, merged by its autoscaling coordinator)."""
        from ray.autoscaler.v2.sdk import get_cluster_status

        gcs = self._gcs()
        nodes = [n for n in gcs.get_all_node_info(timeout=30).values() if not n.is_head_node]
        workers = {n.node_id.hex() for n in nodes}
        status = get_cluster_status(self.address)
        demand = status.resource_demands
        if self.autoscaler_v2:
            requested = [
                dict(b.bundle)
                for d in demand.cluster_constraint_demand
                for b in d.bundles_by_count
                for _ in range(b.count)
            ]
        else:
            raw = gcs.internal_kv_get(V1_REQUEST_KEY, namespace=None, timeout=30)
            requested = list(json.loads(raw)) if raw else []
        return {
            "alive": sum(1 for n in nodes if n.state == 0),  # GcsNodeInfo.ALIVE
            "idle": sum(1 for n in status.idle_nodes if n.node_id in workers),
            "launched": len(nodes),
            "pending": sum(
                b.count for d in demand.ray_task_actor_demand for b in d.bundles_by_count
            ),
            "pending_pgs": len(demand.placement_group_demand),
            "requested": requested,
        }

    def wait_for(self, what: str, check: Any, timeout: float, every: float = 0.5) -> Any:
        """Poll ``check(self.status())`` until it is true; returns that status, or raises
        TimeoutError naming ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if check(status):
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout:.0f} s (last: {status})")
            time.sleep(every)


@dataclass
class Watch:
    """Samples a cluster's :meth:`AutoscalingCluster.status` in a thread, every
    ``every`` seconds, from ``start()`` to ``stop()``: ``samples`` is a list of
    ``(seconds since start, status)``."""

    cluster: AutoscalingCluster
    every: float = 0.5
    samples: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-watch", daemon=True)
        self.t0 = time.monotonic()

    def start(self) -> Watch:
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> Watch:
        self._stop.set()
        self._thread.join(timeout=60)
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic() - self.t0, self.cluster.status()))
            except Exception as e:  # a busy GCS: keep sampling
                self.errors.append(f"{type(e).__name__}: {e}")
            self._stop.wait(self.every)

    def peak(self, key: str) -> int:
        return max((int(s[key]) for _, s in self.samples), default=0)

    def first(self, check: Any) -> float | None:
        """Seconds from the start to the first sample for which ``check(status)`` holds."""
        return next((t for t, s in self.samples if check(s)), None)


def _ray() -> str:
    return str(Path(sys.executable).with_name("ray"))


@contextlib.contextmanager
def autoscaling_cluster(
    node_resources: Mapping[str, float],
    max_nodes: int,
    *,
    head_resources: Mapping[str, float] | None = None,
    idle_timeout_s: float = 20.0,
    autoscaler_v2: bool = True,
) -> Iterator[AutoscalingCluster]:
    """Start the cluster (the head only; worker nodes come with demand), yield it, then
    end every process it started. ``head_resources``: the head's resources (default
    ``{"CPU": 0}``: no work lands on it, as in ``infra/``)."""
    head = dict(head_resources if head_resources is not None else {"CPU": 0})
    # Short: Ray's socket paths must stay under 108 characters.
    temp = Path("/tmp") / f"ras{os.getpid()}-{_free_port()}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    port = _free_port()
    address = f"127.0.0.1:{port}"
    config = cluster_config(
        address,
        node_resources,
        max_nodes,
        head_resources=head,
        idle_timeout_s=idle_timeout_s,
        autoscaler_v2=autoscaler_v2,
    )
    config_path = temp / "autoscaling.json"
    config_path.write_text(json.dumps(config))
    cluster = AutoscalingCluster(address, temp, autoscaler_v2)
    env = {
        **os.environ,
        **cluster.env,
        "RAY_FAKE_CLUSTER": "1",
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
        "RAY_enable_autoscaler_v2": "1" if autoscaler_v2 else "0",
    }
    env.pop("RAY_ADDRESS")
    if autoscaler_v2:
        env.update(
            RAY_CLOUD_INSTANCE_ID=FAKE_HEAD_NODE_ID,
            RAY_OVERRIDE_NODE_ID_FOR_TESTING=FAKE_HEAD_NODE_ID,
        )
    command = [
        _ray(),
        "start",
        "--head",
        f"--port={port}",
        f"--temp-dir={temp}",
        f"--autoscaling-config={config_path}",
        "--node-ip-address=127.0.0.1",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--num-cpus={head.pop('CPU', 0):g}",
        f"--num-gpus={head.pop('GPU', 0):g}",
    ]
    if head:
        command.append(f"--resources={json.dumps(head)}")
    try:
        subprocess.run(command, env=env, check=True, capture_output=True, timeout=180)
        yield cluster
    finally:
        end_processes_under(temp)
        shutil.rmtree(temp, ignore_errors=True)


def end_processes_under(temp: Path) -> None:
    """SIGTERM, then SIGKILL, every process whose command line names ``temp`` (the
    cluster's GCS, raylets, autoscaler and workers; nothing else on the machine)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        out = subprocess.run(["pgrep", "-f", str(temp)], capture_output=True, text=True)
        pids = [int(p) for p in out.stdout.split() if int(p) != os.getpid()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(2)
