"""Connecting to Ray: the running instance, a cluster named by RAY_ADDRESS, or a local one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import ray

#: Set to 1 to see Ray's worker logs on the terminal (they are always in Ray's session
#: folder, /tmp/ray/session_latest/logs). Off by default: the project shows its own
#: progress, and without the dashboard Ray Train's controller repeats warnings that the
#: state API is unavailable.
LOGS_ENV = "SPARLING_RAY_LOGS"


#: Ray's switch between a single-machine instance and a cluster node (read by every Ray
#: process when it imports ray; on by default on Linux). Off, Ray takes the loopback
#: address as the node's address, as it does on macOS and Windows.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ensure_ray(num_cpus: int | None = None) -> None:
    """Use the Ray already initialised, else connect to ``RAY_ADDRESS``, else start local Ray.

    The local instance runs without the dashboard (not needed for batch jobs; it costs
    start-up time and memory, and it would be one more server listening) and listens on
    127.0.0.1 only, like every server the project starts (:func:`_on_loopback`).
    """
    if ray.is_initialized():
        return
    log_to_driver = os.environ.get(LOGS_ENV, "0") not in ("", "0", "false", "no")
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
    else:
        with _on_loopback():
            ray.init(
                include_dashboard=False,
                num_cpus=num_cpus,
                _node_ip_address="127.0.0.1",
                log_to_driver=log_to_driver,
            )


def on_cluster() -> bool:
    """Whether the Ray in use is a cluster named by ``RAY_ADDRESS`` (what
    :func:`ensure_ray` connects to), which may add nodes on demand; the local instance
    it starts otherwise never grows."""
    return bool(os.environ.get("RAY_ADDRESS"))


@contextlib.contextmanager
def _on_loopback() -> Iterator[None]:
    """Start local Ray with 127.0.0.1 as its node address, so that its servers (GCS,
    raylet, object manager, core workers, runtime-env agent) listen on loopback only.

    ``_node_ip_address="127.0.0.1"`` alone does not do it: Ray replaces a loopback node
    address by the machine's routable one, and then (measured with Ray 2.60) the GCS,
    the raylet and every core worker listen on all interfaces and the runtime-env agent
    on the machine's address. With :data:`SINGLE_MACHINE_ENV` off, Ray keeps the loopback
    address. The variable is set for the processes Ray starts here (they inherit it) and
    in this process's already-imported constants, then put back as it was.
    """
    from ray._private import ray_constants

    before_env = os.environ.get(SINGLE_MACHINE_ENV)
    before = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before
        if before_env is None:
            os.environ.pop(SINGLE_MACHINE_ENV, None)
        else:
            os.environ[SINGLE_MACHINE_ENV] = before_env


def refuse_unavailable_gpus(gpus_per_worker: float, workers: int = 1) -> None:
    """Refuse a run that asks for GPUs where Ray would wait for them forever: on the local
    Ray instance (no ``RAY_ADDRESS``) of a machine with fewer GPUs than the run needs. A
    cluster named by ``RAY_ADDRESS`` may grow GPU nodes on demand, so it is not checked."""
    if gpus_per_worker <= 0 or on_cluster():
        return
    from sparling.devices import describe_devices
    from sparling.errors import SparlingError

    if ray.is_initialized():
        have = float(ray.cluster_resources().get("GPU", 0))
    else:
        import torch

        have = float(torch.cuda.device_count()) if torch.cuda.is_available() else 0.0
    need = gpus_per_worker * workers
    if have < need:
        raise SparlingError(
            f"compute.gpus_per_worker={gpus_per_worker:g} x {workers} worker(s) needs "
            f"{need:g} GPU(s); the local Ray instance has {have:g} (this machine: "
            f"{describe_devices()}). Set compute.gpus_per_worker=0 to train on the CPU, "
            "or RAY_ADDRESS to a cluster with GPU nodes"
        )
