"""A real, tiny process standing for a simulated VM (``sleep infinity`` in its own session,
reparented away from the driver), so that killing a node, or its watchdog, acts on sim VMs
exactly as on QEMU ones."""

from __future__ import annotations

import asyncio

from hvcluster.drivers.errors import ProcessFailed

SPAWN = "sleep infinity </dev/null >/dev/null 2>&1 & echo $!"


async def spawn() -> int:
    """Start a detached placeholder; return its pid."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            SPAWN,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        out, _ = await proc.communicate()
        return int(out.strip())
    except (OSError, ValueError) as e:
        raise ProcessFailed(f"cannot start the placeholder process of a sim VM: {e}") from e
