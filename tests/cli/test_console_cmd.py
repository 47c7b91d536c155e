"""``hvc vm console``, run as a real process against agents' APIs served for real with sim
drivers: a line typed from a pipe, an interactive terminal (a pty) left with the escape key,
the console followed to another node, and a refusal's message and exit code."""

from __future__ import annotations

import asyncio
import os
import pty
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hvcluster.models.token import Role
from hvcluster.store.memory_store import MemoryStore
from tests.api.console_agents import KEYS, ConsoleAgents, console_agents
from tests.tokens import make_token

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def agents(store: MemoryStore, tmp_path: Path) -> AsyncIterator[ConsoleAgents]:
    async with console_agents(store, tmp_path, "n1", "n2") as a:
        yield a


def api(agents: ConsoleAgents, node: str) -> str:
    return f"http://127.0.0.1:{agents.ports[node]}"


async def hvc_console(
    agents: ConsoleAgents, token: str, *args: str, stdin: int | None = None
) -> asyncio.subprocess.Process:
    env = {**os.environ, "HVC_TOKEN": token, "HVC_CONFIG": "", "HVC_LAB_DIR": "/nonexistent"}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hvcluster", "vm", "console", *args,
        stdin=stdin if stdin is not None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE if stdin is None else stdin,
        stderr=asyncio.subprocess.PIPE if stdin is None else stdin,
        env=env,
    )  # fmt: skip


async def test_a_piped_line_is_answered_and_a_reader_refused(
    agents: ConsoleAgents, store: MemoryStore
) -> None:
    await agents.create_vm("web", "n1")
    operator = await make_token(store, KEYS, "ops", Role.OPERATOR)
    proc = await hvc_console(agents, operator, "web", "--api", api(agents, "n2"))
    out, err = await asyncio.wait_for(proc.communicate(b"echo piped-$((1))\n"), 30)
    assert proc.returncode == 0, err
    assert b"piped-$((1))\r\n" in out  # the sim's shell echoes the words as given
    assert b"Escape key is '^]'" in err and b"Left the console of web" in err

    reader = await make_token(store, KEYS, "looker", Role.READER)
    proc = await hvc_console(agents, reader, "web", "--api", api(agents, "n1"))
    out, err = await asyncio.wait_for(proc.communicate(b""), 30)
    assert proc.returncode == 1 and b"needs the operator role" in err
    proc = await hvc_console(agents, operator, "nope", "--api", api(agents, "n1"))
    out, err = await asyncio.wait_for(proc.communicate(b""), 30)
    assert proc.returncode == 3 and b"no vm named 'nope'" in err


async def test_an_interactive_terminal_follows_the_vm_and_leaves_with_the_escape_key(
    agents: ConsoleAgents, store: MemoryStore
) -> None:
    spec = await agents.create_vm("web", "n1")
    operator = await make_token(store, KEYS, "ops", Role.OPERATOR)
    main, child = pty.openpty()
    proc = await hvc_console(agents, operator, "web", "--api", api(agents, "n1"), stdin=child)
    os.close(child)
    loop = asyncio.get_running_loop()
    seen = b""

    async def until(marker: bytes) -> None:
        nonlocal seen
        async with asyncio.timeout(20):
            while marker not in seen:
                seen += await loop.run_in_executor(None, os.read, main, 4096)

    try:
        # Typed before hvc has even connected: not lost when it makes the terminal raw.
        os.write(main, b"echo early\r")
        await until(b"early\r\nweb:/# ")
        await until(b"Escape key")
        # Raw: ^C goes to the guest (a cooked terminal would interrupt hvc itself).
        os.write(main, b"\x03echo raw-one\r")
        await until(b"raw-one\r\nweb:/# ")
        assert proc.returncode is None
        await agents.migrate(spec, "n1", "n2", epoch=2)
        await until(b"[hvc: the console of web on n2]")
        os.write(main, b"hostname\r")
        await until(b"\r\nweb\r\nweb:/# ")
        os.write(main, b"\x1d")  # ^]
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        await until(b"Left the console of web")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(main)
