"""A migration record admits only what is safe to act on: a target address of the form
``tcp:HOST:PORT`` (QEMU's ``migrate`` takes any URI, ``exec:`` included), and a quick
migration's state file as ``VOLUME:.hvc-migration-state/NAME``."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hvcluster.models.migration import Migration, address_host, state_volume
from hvcluster.models.node import Capacity, Node
from hvcluster.models.vm import VMSpec

BASE = {"id": "m1", "vm": "web", "source": "n1", "target": "n2"}


@pytest.mark.parametrize(
    "address", ["tcp:10.0.0.2:49152", "tcp:[fd00::2]:4444", "tcp:node-2.lab:1", ""]
)
def test_tcp_addresses_are_accepted(address: str) -> None:
    assert Migration.model_validate({**BASE, "target_address": address}).target_address == address


@pytest.mark.parametrize(
    "address",
    [
        "exec:sh -c 'touch /tmp/x'",
        "unix:/run/qemu.sock",
        "fd:3",
        "file:/etc/passwd",
        "tcp:10.0.0.2:0",
        "tcp:10.0.0.2:70000",
        "tcp:10.0.0.2",
        "tcp:a b:4444",
        "tcp:10.0.0.2:4444,exec:x",
    ],
)
def test_anything_else_is_refused_naming_the_field(address: str) -> None:
    with pytest.raises(ValidationError) as e:
        Migration.model_validate({**BASE, "target_address": address})
    assert "target_address" in str(e.value) and "is not tcp:HOST:PORT" in str(e.value)


def test_address_host_strips_ipv6_brackets() -> None:
    assert address_host("tcp:[fd00::2]:4444") == "fd00::2"
    assert address_host("tcp:10.0.0.2:4444") == "10.0.0.2"


@pytest.mark.parametrize(
    "path",
    ["/var/lib/x.state", "csv:../etc/passwd", "csv:other/x.state", "csv:.hvc-migration-state/../x"],
)
def test_a_state_file_is_on_a_volume_in_its_directory(path: str) -> None:
    with pytest.raises(ValidationError):
        Migration.model_validate({**BASE, "kind": "quick", "state_file": path})


def node(name: str, *volumes: str) -> Node:
    return Node(
        name=name, address="10.0.0.1", capacity=Capacity(cpus=1, memory_mib=1), volumes=volumes
    )


def test_the_state_goes_to_the_vms_disk_volume_else_any_both_see() -> None:
    spec = VMSpec.model_validate({"name": "web", "disks": [{"volume": "b", "path": "web.qcow2"}]})
    assert state_volume(spec, node("n1", "a", "b"), node("n2", "a", "b")) == "b"
    assert state_volume(spec, node("n1", "a", "c"), node("n2", "c", "a")) == "a"
    assert state_volume(spec, node("n1", "a"), node("n2", "b")) is None
