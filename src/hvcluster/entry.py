"""The ``hvc`` console script: the CLI plus the daemon commands that run on a host.

This module is the composition root. The layer rules forbid ``cli`` to import ``agent`` (the
CLI is a client of the API), so the daemon commands (``hvc agent``, ``hvc watchdog``) are
added to the CLI app here, outside every layer; so is ``hvc host`` (the host install, which
validates the agent's config as the agent reads it), and ``hvc sim`` (the simulator, which
runs the agent and controller).
"""

from __future__ import annotations

from hvcluster.agent.commands import register
from hvcluster.cli.main import app
from hvcluster.hostinstall.commands import app as host_app
from hvcluster.simulate.commands import app as sim_app

register(app)
app.add_typer(host_app, name="host")
app.add_typer(sim_app, name="sim")

__all__ = ["app"]
