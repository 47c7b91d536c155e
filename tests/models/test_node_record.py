"""Node records as etcd holds them: ones written before a field was renamed still decode."""

from __future__ import annotations

import json

from hvcluster.models.base import decode, encode
from hvcluster.models.guestcpu import QEMU_DEFAULT, default_guest_cpu
from hvcluster.models.node import Capacity, Inventory, Node

OLD = {
    "name": "n1",
    "address": "10.0.0.1",
    "capacity": {"cpus": 4, "memory_mib": 4096},
    "inventory": {"cpu_model": "Intel Xeon E5", "accelerator": "kvm", "driver": "qemu"},
}


def test_a_record_naming_the_host_cpu_cpu_model_still_decodes_as_host_cpu() -> None:
    node = decode(Node, "nodes/n1", json.dumps(OLD).encode())
    assert node.inventory.host_cpu == "Intel Xeon E5"
    written = json.loads(encode(node))
    assert written["inventory"]["host_cpu"] == "Intel Xeon E5"
    assert "cpu_model" not in written["inventory"]  # written back under the new name only
    assert decode(Node, "nodes/n1", encode(node)) == node


def test_the_guest_cpu_default_of_a_node_that_did_not_report_one() -> None:
    qemu = Inventory(host_cpu="Intel Xeon E5", driver="qemu")
    sim = Inventory(host_cpu="sim-cpu", driver="sim")
    assert default_guest_cpu(qemu) == QEMU_DEFAULT  # never the host's own model
    assert default_guest_cpu(sim) == "sim-cpu"
    assert default_guest_cpu(Inventory(driver="sim")) == "sim"
    reported = Inventory(host_cpu="x", guest_cpu_model="Haswell", driver="qemu")
    assert default_guest_cpu(reported) == "Haswell"
    assert Node(name="n2", address="a", capacity=Capacity(cpus=1, memory_mib=1)).inventory == (
        Inventory()
    )
