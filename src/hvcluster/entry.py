"""The ``hvc`` console script: the CLI plus the daemon commands that run on a host.

This module is the composition root. The layer rules forbid ``cli`` to import ``agent`` (the
CLI is a client of the API), so the daemon commands (``hvc agent``, ``hvc watchdog``) are
added to the CLI app here, outside every layer.
"""

from __future__ import annotations

from hvcluster.agent.commands import register
from hvcluster.cli.main import app

register(app)

__all__ = ["app"]
