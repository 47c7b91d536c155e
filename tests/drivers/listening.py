"""Which TCP ports a process listens on, from /proc (what ``ss -ltnp`` shows, without it)."""

from __future__ import annotations

import os
from pathlib import Path

LISTEN = "0A"  # the TCP state column of /proc/net/tcp


def tcp_listening_ports(pid: int) -> list[int]:
    """The TCP ports (v4 and v6) the process ``pid`` holds a listening socket on."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = []
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == LISTEN and fields[9] in inodes:
                ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return sorted(ports)
