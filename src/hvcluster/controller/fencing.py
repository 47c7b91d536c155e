"""External fence agents: a configured command that powers a dead node off (IPMI, Redfish,
a PDU, anything) and exits 0 once that is confirmed. A confirmed fence lets the controller
recover the node's VMs at once instead of waiting out ``fence_after`` + margin."""

from __future__ import annotations

import asyncio
import logging
import shlex

from hvcluster.metrics import AgentMetrics
from hvcluster.models.event import Say

log = logging.getLogger(__name__)


async def run_fence(command: str, node: str, timeout: float) -> tuple[bool, str]:
    """Run the fence command for ``node``; (confirmed off?, what it said)."""
    argv = shlex.split(command.replace("{node}", node))
    if not argv:
        return False, "empty fence command"
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except OSError as e:
        return False, f"cannot run {argv[0]}: {e.strerror}"
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return False, f"fence command timed out after {timeout:.0f}s"
    text = out.decode(errors="replace").strip()[-300:]
    if proc.returncode == 0:
        return True, text
    return False, f"fence command exited {proc.returncode}: {text}"


class Fencer:
    """Fences each gone node once per outage, in the background."""

    def __init__(self, say: Say, metrics: AgentMetrics | None = None) -> None:
        self.say = say
        self.metrics = metrics if metrics is not None else AgentMetrics()
        self.fenced: set[str] = set()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def forget(self, node: str) -> None:
        """The node is back: a later outage fences again."""
        self.fenced.discard(node)
        task = self._tasks.pop(node, None)
        if task is not None and not task.done():
            task.cancel()

    def request(self, node: str, command: str, timeout: float) -> None:
        if not command or node in self.fenced or node in self._tasks:
            return
        self._tasks[node] = asyncio.create_task(self._fence(node, command, timeout))

    async def _fence(self, node: str, command: str, timeout: float) -> None:
        ok, said = await run_fence(command, node, timeout)
        self.metrics.fence_agent_runs.labels(result="confirmed" if ok else "failed").inc()
        if ok:
            self.fenced.add(node)
            await self.say(
                "node.fenced",
                f"node/{node}",
                f"fence agent confirmed node {node} is off: {said or 'exit 0'}",
            )
        else:
            # Keep the task entry: we do not retry in a loop; the normal wait applies.
            await self.say(
                "node.fence_failed",
                f"node/{node}",
                f"fence agent could not confirm node {node} is off: {said}; "
                "waiting for fence_after + margin instead",
            )

    def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
