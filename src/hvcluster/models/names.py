"""Name rules shared by every named object (VMs, nodes, volumes, switches), and the size
bounds shared by the fields a request may fill (labels, host paths, lists, periods)."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints, WithJsonSchema

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


def check_name(value: str) -> str:
    """A DNS-label-like name: lowercase letters, digits and '-', 1 to 63 characters,
    starting and ending with a letter or digit. It becomes part of etcd keys, file names
    and QEMU arguments, so nothing else is allowed."""
    rule = "use 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"
    return matching(_NAME, value, "name", rule)


def matching(pattern: re.Pattern[str], value: str, what: str, rule: str) -> str:
    """``value``, if ``pattern`` matches it; else a ValueError saying it is an invalid
    ``what`` and the ``rule`` it breaks."""
    if not pattern.match(value):
        raise ValueError(f"invalid {what} {value!r}: {rule}")
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


_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})$")
_DOTTED = re.compile(r"^[0-9.]+$")  # looks like an IPv4 address: must be a valid one


def check_host(value: str) -> str:
    """An address other hosts reach this one at: an IP address (IPv6 without brackets) or
    a host name. Never "any address" (0.0.0.0, ::): another host must connect to it."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        if _DOTTED.match(value) or not _HOSTNAME.match(value):
            raise ValueError(f"{value!r} is not an IP address or a host name") from None
        return value
    if ip.is_unspecified:
        raise ValueError(f"{value} means any address: give the one other hosts reach it at")
    return value


def check_host_or_empty(value: str) -> str:
    return value if value == "" else check_host(value)


# The rule is also in the OpenAPI schema (clients and API fuzzers see it); our validator
# says what is wrong in a sentence.
Name = Annotated[
    str,
    AfterValidator(check_name),
    WithJsonSchema({"type": "string", "pattern": _NAME.pattern, "maxLength": 63}),
]
Mac = Annotated[str, AfterValidator(check_mac)]


# Every value a request sends is stored in etcd and read back whole, by every controller
# cycle among others, so no field is unbounded. A request over a bound gets a 422 naming the
# field; these are far above what a real VM or node needs.
LABELS_MAX = 64  # labels on one object
LABEL_KEY_MAX = 63
LABEL_VALUE_MAX = 255
PATH_MAX = 4096  # a host path (Linux's PATH_MAX)
NODE_NAMES_MAX = 64  # node names in one list (a failover cluster has at most 64 nodes)
LIST_MAX = 32  # other lists of short strings (anti-affinity classes, start groups)
PERIOD_S_MAX = 366 * 86400.0  # a counting window (failovers, quarantine, local restarts)

LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=LABEL_KEY_MAX)]
LabelValue = Annotated[str, StringConstraints(max_length=LABEL_VALUE_MAX)]
Labels = Annotated[dict[LabelKey, LabelValue], Field(max_length=LABELS_MAX)]
ShortText = Annotated[str, StringConstraints(max_length=LABEL_KEY_MAX)]  # a group or class
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_no_control(value: str) -> str:
    """Host paths and QEMU arguments hold no control character: a NUL cannot be passed to
    a program or a system call at all (Python raises), a newline would split a log line."""
    found = _CONTROL.search(value)
    if found:
        raise ValueError(
            f"must not contain control characters ({found.group()!r} at {found.start()})"
        )
    return value


HostPath = Annotated[str, StringConstraints(max_length=PATH_MAX), AfterValidator(check_no_control)]
Argument = Annotated[str, AfterValidator(check_no_control)]  # bound its length where used
