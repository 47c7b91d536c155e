"""A VM's consoles: what kinds there are, and where each is on the VM's host.

Every console is a byte stream on a unix socket of the VM's runtime dir on its owner, never a
TCP port: ``serial`` (the guest's first serial port) and ``vnc`` (QEMU's VNC server: the RFB
protocol, as noVNC speaks it). The API bridges a websocket to it (``api/consoles.py``).
"""

from __future__ import annotations

from enum import StrEnum


class ConsoleKind(StrEnum):
    SERIAL = "serial"
    VNC = "vnc"


def console_socket_name(kind: ConsoleKind) -> str:
    """The file name of a console's socket in a VM's runtime dir (``serial.sock``)."""
    return f"{kind.value}.sock"
