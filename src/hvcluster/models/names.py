"""Name rules shared by every named object (VMs, nodes, volumes, switches)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


def check_name(value: str) -> str:
    """A DNS-label-like name: lowercase letters, digits and '-', 1 to 63 characters,
    starting and ending with a letter or digit. It becomes part of etcd keys, file names
    and QEMU arguments, so nothing else is allowed."""
    if not _NAME.match(value):
        raise ValueError(
            f"invalid name {value!r}: use 1-63 lowercase letters, digits or '-', "
            "starting and ending with a letter or digit"
        )
    return value


def check_mac(value: str) -> str:
    value = value.lower()
    if not MAC_RE.match(value):
        raise ValueError(
            f"invalid MAC address {value!r}: expected six hex pairs like 52:54:00:12:34:56"
        )
    if int(value[:2], 16) & 1:
        raise ValueError(f"MAC address {value!r} is multicast; a NIC needs a unicast address")
    return value


Name = Annotated[str, AfterValidator(check_name)]
Mac = Annotated[str, AfterValidator(check_mac)]
