"""How the agent starts: liveness first, then the rest (agent/host_liveness.py says why).

``python -m hvcluster.agent --config FILE`` is the quick way in (the systemd unit's and the
lab's): argparse, the config, and only the modules liveness needs are imported before
liveness starts; ``hvc agent`` (Typer, the whole CLI imported first) runs the same
:func:`run`, with the CLI's import time before it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from hvcluster.agent.config import AgentConfig, load_config
from hvcluster.agent.host_liveness import HostLiveness
from hvcluster.models.errors import HvcError

log = logging.getLogger("hvc.agent")


async def serve(cfg: AgentConfig) -> None:
    """Start liveness, then import and run the daemon (its liveness already running)."""
    host = HostLiveness(cfg)
    await host.start()
    try:
        # The API, dashboard, controller and drivers: seconds of imports on a loaded host,
        # taken while liveness (on its own thread) adopts the lease and feeds the watchdog.
        from hvcluster.agent.daemon import Daemon

        daemon = Daemon(cfg, host=host)
    except BaseException:
        try:
            await host.runner.stop()
        finally:
            await host.close()
        raise
    await daemon.run()


def run(cfg: AgentConfig) -> None:
    """Run this host's agent until SIGTERM or SIGINT; exit 1 on an error it names."""
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {cfg.node} %(name)s %(levelname)s %(message)s",
    )

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: task.cancel() if task else None)
        with contextlib.suppress(asyncio.CancelledError):
            await serve(cfg)

    try:
        asyncio.run(main())
    except HvcError as e:
        log.error("agent stopped: %s", e)
        raise SystemExit(1) from None


def main(argv: list[str] | None = None) -> None:
    """``python -m hvcluster.agent --config FILE`` (the settings in the file; ``hvc agent
    --help`` lists the overrides the full CLI takes)."""
    parser = argparse.ArgumentParser(prog="python -m hvcluster.agent", description=__doc__)
    parser.add_argument("--config", "-c", type=Path, required=True, help="agent TOML config")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, {})
    except HvcError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    run(cfg)
