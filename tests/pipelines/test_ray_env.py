"""The local Ray instance that ``ensure_ray`` starts listens on loopback only."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import run_python

pytestmark = pytest.mark.skipif(
    not Path("/proc/net/tcp").exists(), reason="reads listening sockets from Linux's /proc"
)

#: Run in a fresh process (the test process may hold a Ray of its own): start local Ray
#: through ensure_ray, run one task (so that a worker process listens too), then print
#: every listening TCP socket and bound UDP socket of this process and its descendants
#: (GCS, raylet, agents, workers) as [pid, process name, address, port].
PROBE = r"""
import json, os, socket
from pathlib import Path

import ray
from pipelines.ray_env import ensure_ray

ensure_ray(num_cpus=1)
ray.get(ray.remote(lambda: os.getpid()).remote())

def parents():
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(stat.parent.name)] = int(fields[1])
    return out

ppid = parents()
family = {os.getpid()}
grew = True
while grew:
    more = {p for p, parent in ppid.items() if parent in family} - family
    family |= more
    grew = bool(more)

inodes = {}
for pid in family:
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    except OSError:
        continue

def address(hex_ip):
    raw = bytes.fromhex(hex_ip)
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)

found = []
for proto in ("tcp", "tcp6", "udp", "udp6"):
    for line in Path(f"/proc/net/{proto}").read_text().splitlines()[1:]:
        f = line.split()
        listening = f[3] == "0A" if proto.startswith("tcp") else True
        if f[9] in inodes and listening:
            pid = inodes[f[9]]
            ip, port = f[1].split(":")
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            found.append([pid, name, address(ip), int(port, 16)])
print("SOCKETS " + json.dumps(found))
ray.shutdown()
"""

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def test_local_ray_listens_on_loopback_only() -> None:
    out = run_python("-c", PROBE, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("SOCKETS "))
    sockets = json.loads(line.removeprefix("SOCKETS "))
    names = {name for _, name, _, _ in sockets}
    # the servers are there (the probe sees them), and every one is on loopback
    assert {"gcs_server", "raylet"} <= names, sockets
    assert len({pid for pid, *_ in sockets}) >= 4, sockets  # and the driver, a worker, ...
    wide = [s for s in sockets if s[2] not in LOOPBACK]
    assert not wide, f"listening beyond loopback: {wide}"
    print(f"{len(sockets)} Ray sockets, all on loopback: {sorted(names)}", file=sys.stderr)
