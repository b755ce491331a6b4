"""Connecting to Ray: the running instance, a cluster named by RAY_ADDRESS, or a local one."""

from __future__ import annotations

import os

import ray

#: Set to 1 to see Ray's worker logs on the terminal (they are always in Ray's session
#: folder, /tmp/ray/session_latest/logs). Off by default: the project shows its own
#: progress, and without the dashboard Ray Train's controller repeats warnings that the
#: state API is unavailable.
LOGS_ENV = "SPARLING_RAY_LOGS"


def ensure_ray(num_cpus: int | None = None) -> None:
    """Use the Ray already initialised, else connect to ``RAY_ADDRESS``, else start local Ray.

    The local instance runs without the dashboard (not needed for batch jobs; it costs
    start-up time and memory, and it would be one more server listening) and binds to
    127.0.0.1 like every server the project starts.
    """
    if ray.is_initialized():
        return
    log_to_driver = os.environ.get(LOGS_ENV, "0") not in ("", "0", "false", "no")
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
    else:
        ray.init(
            include_dashboard=False,
            num_cpus=num_cpus,
            _node_ip_address="127.0.0.1",
            log_to_driver=log_to_driver,
        )


def refuse_unavailable_gpus(gpus_per_worker: float, workers: int = 1) -> None:
    """Refuse a run that asks for GPUs where Ray would wait for them forever: on the local
    Ray instance (no ``RAY_ADDRESS``) of a machine with fewer GPUs than the run needs. A
    cluster named by ``RAY_ADDRESS`` may grow GPU nodes on demand, so it is not checked."""
    if gpus_per_worker <= 0 or os.environ.get("RAY_ADDRESS"):
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
