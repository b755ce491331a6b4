"""Connecting to Ray: the running instance, a cluster named by RAY_ADDRESS, or a local one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

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
        check_ray_address()  # Ray itself would retry an address that never answers for minutes
        ray.init(address=address, log_to_driver=log_to_driver)
    else:
        with _on_loopback():
            ray.init(
                include_dashboard=False,
                num_cpus=num_cpus,
                _node_ip_address="127.0.0.1",
                log_to_driver=log_to_driver,
            )


#: seconds to wait for the head node named by ``RAY_ADDRESS`` to accept a connection
ADDRESS_TIMEOUT_S = 10.0


def check_ray_address() -> None:
    """Refuse a ``RAY_ADDRESS`` that names no reachable Ray head, at once and before
    anything is written: a value that is no ``host:port`` (or ``ray://host:port``, or
    ``auto``), or a host and port where nothing accepts a connection within
    :data:`ADDRESS_TIMEOUT_S` (``ray.init`` would retry it for minutes, printing warnings).
    Nothing to check without ``RAY_ADDRESS`` (a local instance is started), or for
    ``auto`` / ``local`` (Ray finds or starts the instance on this machine itself)."""
    import socket

    from sparling.errors import SparlingError

    address = os.environ.get("RAY_ADDRESS", "").strip()
    if not address or address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SparlingError(
            f"RAY_ADDRESS={address!r} is no Ray address: expected host:port of the cluster's "
            "head node (e.g. 10.0.0.5:6379), ray://host:port, or auto; unset it to run on "
            "a local Ray instance"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=ADDRESS_TIMEOUT_S):
            pass
    except OSError as e:
        cause = e.strerror or str(e) or type(e).__name__
        raise SparlingError(
            f"RAY_ADDRESS={address}: nothing answers at {host}:{port} ({cause}); start the "
            "cluster's head node there (ray start --head), or unset RAY_ADDRESS to run on a "
            "local Ray instance; nothing was started"
        ) from None


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


def refuse_unavailable_cpus(cpus_per_worker: float, workers: int = 1) -> None:
    """Refuse a run that asks for more CPUs than the local Ray instance has (it would wait
    for them forever, showing 0 samples); a cluster named by ``RAY_ADDRESS`` may add
    nodes, so it is not checked."""
    if on_cluster():
        return
    from sparling.errors import SparlingError

    if ray.is_initialized():
        have = float(ray.cluster_resources().get("CPU", 0))
    else:
        from ray._private.utils import get_num_cpus  # what a local instance starts with

        have = float(get_num_cpus())
    need = cpus_per_worker * workers
    if have < need:
        raise SparlingError(
            f"compute.cpus_per_worker={cpus_per_worker:g} x {workers} worker(s) needs "
            f"{need:g} CPU(s); the local Ray instance has {have:g}. Set "
            f"compute.cpus_per_worker (and compute.workers) to fit in {have:g}, or "
            "RAY_ADDRESS to a cluster with larger nodes"
        )


def refuse_unavailable_resources(compute: Any) -> None:
    """:func:`refuse_unavailable_gpus` and :func:`refuse_unavailable_cpus` for a run's
    ``compute`` section (:class:`sparling.config.ComputeConfig`)."""
    refuse_unavailable_gpus(compute.gpus_per_worker, compute.workers)
    refuse_unavailable_cpus(compute.cpus_per_worker, compute.workers)
