"""Where the API finds the consoles of this host's VMs: its driver, through the contract
(``Driver.console``), in the API's terms (the API never imports a driver)."""

from __future__ import annotations

from pathlib import Path

from hvcluster.api.consoles import LocalConsole
from hvcluster.drivers.base import Driver
from hvcluster.drivers.errors import NoConsole, NotRunning
from hvcluster.models.console import ConsoleKind
from hvcluster.models.errors import Conflict


def local_console(driver: Driver) -> LocalConsole:
    """The socket of a VM's console on this host; None when the host does not run the VM
    (it left, or has not arrived yet); Conflict when the VM has no such console."""

    async def find(name: str, kind: ConsoleKind) -> Path | None:
        try:
            return await driver.console(name, kind)
        except NotRunning:
            return None
        except NoConsole as e:
            raise Conflict(str(e)) from e

    return find
