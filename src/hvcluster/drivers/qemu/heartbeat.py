"""The guest's heartbeat: ``guest-sync`` over a virtio-serial channel, as qemu-guest-agent
answers it, so a guest whose OS hangs (its QEMU process still running) is noticed.

QEMU serves the channel's host end as a unix socket in the VM's runtime dir
(:data:`AGENT_SOCKET`); the driver connects to it, writes
``{"execute": "guest-sync", "arguments": {"id": N}}`` lines and counts only the answer
``{"return": N}`` to the latest N (qemu-ga's JSON protocol; the test guest answers it with a
shell loop). Matching the id matters: requests sent while the guest booted pile up in the
channel, and their late answers must not pass for a live guest after it hung.

Only time spent *running* counts: a paused or migrating guest cannot answer, so its
silence is no failure. Before its first answer after a start the guest has
``heartbeat_grace_s`` (its boot), then ``heartbeat_timeout_s`` between answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from hvcluster.models.lifecycle import VMState
from hvcluster.models.vm import GuestMonitor

AGENT_SOCKET = "guest-agent.sock"
CHANNEL = "org.qemu.guest_agent.0"  # the port name qemu-guest-agent looks for


def ping(n: int) -> bytes:
    return json.dumps({"execute": "guest-sync", "arguments": {"id": n}}).encode() + b"\n"


log = logging.getLogger(__name__)


def heartbeat_argv(vm_dir: Path, opt: Callable[[object], str]) -> list[str]:
    """The virtio-serial controller and the named port whose host end is our socket."""
    path = opt(vm_dir.absolute() / AGENT_SOCKET)
    return [
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", f"socket,id=guestagent,path={path},server=on,wait=off",
        "-device", f"virtserialport,bus=vser0.0,chardev=guestagent,name={CHANNEL}",
    ]  # fmt: skip


def interval_of(monitor: GuestMonitor) -> float:
    """How often to ping: a few times per timeout, at most once a second."""
    return max(0.1, min(1.0, monitor.heartbeat_timeout_s / 4))


async def watch(
    name: str,
    path: Path,
    monitor: GuestMonitor,
    state: Callable[[], VMState],
    exited: asyncio.Event,
    on_silent: Callable[[str], None],
) -> None:
    """Ping the guest until its QEMU exits; call ``on_silent(reason)`` once, when it has not
    answered for too long while running, and stop."""
    interval = interval_of(monitor)
    last = time.monotonic()
    answered = False
    sent = 0
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        while not exited.is_set():
            now = time.monotonic()
            if state() is not VMState.RUNNING:
                last = now  # a paused or migrating guest cannot answer: not counted
            limit = monitor.heartbeat_timeout_s if answered else monitor.heartbeat_grace_s
            if now - last > limit:
                what = f"no heartbeat for {limit:g}s" if answered else "no first heartbeat"
                on_silent(f"guest not answering: {what} (guest-sync)")
                return
            if writer is None:
                with contextlib.suppress(OSError):
                    reader, writer = await asyncio.open_unix_connection(str(path))
            if writer is not None and reader is not None:
                try:
                    sent += 1
                    writer.write(ping(sent))
                    await asyncio.wait_for(writer.drain(), interval)
                    if await _answer(reader, interval, sent):
                        if not answered:
                            log.info("vm %s: the guest answers its heartbeat", name)
                        last, answered = time.monotonic(), True
                        await asyncio.sleep(interval)
                    continue
                except (OSError, TimeoutError) as e:
                    log.debug("vm %s: heartbeat channel: %s; connecting again", name, e)
                    writer.close()
                    reader = writer = None
            await asyncio.sleep(interval)
    finally:
        if writer is not None:
            writer.close()


async def _answer(reader: asyncio.StreamReader, wait: float, n: int) -> bool:
    """Whether the answer to request ``n`` arrives within ``wait`` seconds (the answers to
    earlier requests, and anything else, are skipped)."""
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = await asyncio.wait_for(reader.readline(), left)
        except TimeoutError:
            return False
        if not line:
            raise OSError("the guest channel closed")
        with contextlib.suppress(ValueError):
            answer = json.loads(line)
            if isinstance(answer, dict) and answer.get("return") == n:
                return True
    return False
