"""Connecting to Ray: the running instance, a cluster named by RAY_ADDRESS, or a local one."""

from __future__ import annotations

import os

import ray


def ensure_ray(num_cpus: int | None = None) -> None:
    """Use the Ray already initialised, else connect to ``RAY_ADDRESS``, else start local Ray.

    The local instance runs without the dashboard (not needed for batch jobs; it costs
    start-up time and memory, and it would be one more server listening) and binds to
    127.0.0.1 like every server the project starts.
    """
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False, num_cpus=num_cpus, _node_ip_address="127.0.0.1")
