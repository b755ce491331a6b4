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
