"""Running a host command (qemu-img, ip) from the agent: bounded in time, errors as ours."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence


async def run_command(argv: Sequence[str], timeout_s: float, error: type[Exception]) -> str:
    """Run ``argv``; return its stdout. Anything wrong raises ``error`` with what the command
    said: it could not start, it took longer than ``timeout_s`` (it is killed), it failed."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
    except OSError as e:
        raise error(f"cannot run {argv[0]}: {e.strerror or e}") from None
    command = " ".join(argv)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise error(f"{command} did not finish in {timeout_s:.0f}s") from None
    if proc.returncode != 0:
        said = err.decode(errors="replace").strip() or f"exit status {proc.returncode}"
        raise error(f"{command}: {said}")
    return out.decode(errors="replace")
