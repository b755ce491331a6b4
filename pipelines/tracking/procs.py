"""Processes and ports: what the local tracking server needs to find, check and stop its
``mlflow server`` process (Linux ``/proc`` where there is one, ``kill(0)`` otherwise)."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

#: The only address the local tracking server binds to.
LOOPBACK = "127.0.0.1"


def proc_start_time(pid: int) -> int | None:
    """Kernel start time of a process (jiffies since boot), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may hold spaces and parentheses: split after its closing ")".
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19]) if len(fields) > 19 else None


def process_alive(pid: int, start_time: int | None = None) -> bool:
    """Alive and not a zombie; the same process when ``start_time`` is known."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, someone else's
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
    except (OSError, IndexError):
        pass  # no /proc: trust kill(0)
    if start_time is not None:
        current = proc_start_time(pid)
        if current is not None and current != start_time:
            return False
    return True


def cmdline(pid: int) -> str:
    """The command line of a process (empty when it is gone or unreadable)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def free_port(host: str = LOOPBACK) -> int:
    """A port free on ``host`` now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether ``port`` can be bound on ``host`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def server_healthy(uri: str, timeout: float = 2.0) -> bool:
    """Whether an MLflow server answers ``GET /health`` with 200."""
    # No proxy: an HTTP(S)_PROXY in the environment must not intercept 127.0.0.1.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{uri.rstrip('/')}/health", timeout=timeout) as r:
            return bool(r.status == 200)
    except (OSError, urllib.error.URLError, ValueError):
        return False


def group_alive(pgid: int) -> bool:
    """Whether any non-zombie process of the group remains."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return not Path("/proc/self").exists()
