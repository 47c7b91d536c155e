"""Inventory (what each node reports) and hypervisor (can VMs move between them)."""

from __future__ import annotations

from itertools import combinations

from hvcluster.models.node import Inventory, Node
from hvcluster.models.validation import (
    Category,
    Check,
    CheckStatus,
    ValidationFacts,
)
from hvcluster.validate.common import FAIL, PASS, WARN, Thresholds, alive_nodes, mib, names

# Guests see the named CPU model their node's agent gives them (the agent's ``guest_cpu``,
# reported as ``inventory.guest_cpu_model``), not the host's CPU: one model on every node is
# what keeps live migration possible between different hosts.


# --- inventory ---------------------------------------------------------------------------


def _describe(node: Node) -> str:
    inv = node.inventory
    cpu = inv.cpu_model or "unknown CPU"
    if inv.cpu_flags:
        cpu += f" ({len(inv.cpu_flags)} flags)"
    driver = f"{inv.driver} driver"
    if inv.driver == "qemu":
        driver += f", QEMU {inv.qemu_version}" if inv.qemu_version else ", no QEMU version"
    return (
        f"{cpu}, {node.capacity.cpus} CPUs, {mib(node.capacity.memory_mib)}; {driver}, "
        f"accelerator {inv.accelerator}, guest CPU {inv.guest_cpu}"
    )


def inventory(facts: ValidationFacts, t: Thresholds) -> list[Check]:
    cat = Category.INVENTORY
    if not facts.nodes:
        return [
            Check(
                category=cat,
                name="nodes",
                status=FAIL,
                message="no node is registered",
                action="start an agent on each host (hvc agent)",
            )
        ]
    checks: list[Check] = []
    for node in sorted(facts.nodes, key=lambda n: n.name):
        name = f"node {node.name}"
        if node.name not in facts.alive:
            checks.append(
                Check(
                    category=cat,
                    name=name,
                    status=WARN,
                    message=f"{node.name} is not alive (its lease is gone): left out of the "
                    f"other checks; last reported {_describe(node)}",
                    action=f"start the agent on {node.name}, or ignore if it is down on purpose",
                    nodes=(node.name,),
                )
            )
        elif node.inventory.guest_cpu_problem:
            checks.append(
                Check(
                    category=cat,
                    name=name,
                    status=FAIL,
                    message=f"{node.name} cannot give guests CPU {node.inventory.guest_cpu}: "
                    f"{node.inventory.guest_cpu_problem}",
                    action=f"set guest_cpu in {node.name}'s agent config to a model every node "
                    "can provide (the same on all of them), then restart that agent",
                    nodes=(node.name,),
                )
            )
        elif node.inventory.driver == "qemu" and not node.inventory.qemu_version:
            checks.append(
                Check(
                    category=cat,
                    name=name,
                    status=WARN,
                    message=f"{node.name} reports no QEMU version: {_describe(node)}",
                    action=f"check qemu-system-x86_64 runs on {node.name}",
                    nodes=(node.name,),
                )
            )
        else:
            checks.append(Check(category=cat, name=name, status=PASS, message=_describe(node)))
    versions: dict[str, list[str]] = {}
    for node in alive_nodes(facts):
        if node.inventory.driver == "qemu" and node.inventory.qemu_version:
            versions.setdefault(node.inventory.qemu_version, []).append(node.name)
    if len(versions) > 1:
        listed = "; ".join(f"{v} on {names(ns)}" for v, ns in sorted(versions.items()))
        checks.append(
            Check(
                category=cat,
                name="qemu versions",
                status=WARN,
                message=f"QEMU versions differ: {listed}; a live migration to an older QEMU "
                "can fail",
                action="install the same QEMU version on every node",
                nodes=tuple(n for ns in versions.values() for n in ns),
            )
        )
    elif versions:
        (version,) = versions
        checks.append(
            Check(
                category=cat,
                name="qemu versions",
                status=PASS,
                message=f"QEMU {version} on every qemu node",
            )
        )
    return checks


# --- hypervisor --------------------------------------------------------------------------


def guest_cpu(inv: Inventory) -> str:
    """The CPU model the node's guests see (what live migration needs to match)."""
    return inv.guest_cpu


def hypervisor(facts: ValidationFacts, t: Thresholds) -> list[Check]:
    cat = Category.HYPERVISOR
    nodes = alive_nodes(facts)
    checks: list[Check] = []
    accels: dict[str, list[str]] = {}
    for node in nodes:
        accels.setdefault(node.inventory.accelerator, []).append(node.name)
    if len(accels) > 1:
        listed = "; ".join(f"{a} on {names(ns)}" for a, ns in sorted(accels.items()))
        checks.append(
            Check(
                category=cat,
                name="accelerator",
                status=WARN,
                message=f"nodes use different accelerators: {listed}; VMs fail over between "
                "them, but cannot live-migrate",
                action="set the same accel (kvm or tcg) in every agent's config",
                nodes=tuple(n.name for n in nodes),
            )
        )
    elif accels:
        (accel,) = accels
        checks.append(
            Check(
                category=cat,
                name="accelerator",
                status=PASS,
                message=f"every node runs guests with {accel}",
            )
        )
    for a, b in combinations(nodes, 2):
        checks.append(_pair(a, b))
    return checks


def _pair(a: Node, b: Node) -> Check:
    """Can a VM live-migrate between ``a`` and ``b`` (both ways)?"""
    ia, ib = a.inventory, b.inventory
    name = f"live migration {a.name} <-> {b.name}"
    pair = (a.name, b.name)

    def check(status: CheckStatus, message: str, action: str = "") -> Check:
        return Check(
            category=Category.HYPERVISOR,
            name=name,
            status=status,
            message=message,
            action=action,
            nodes=pair if status is not PASS else (),
        )

    if ia.driver != ib.driver:
        return check(
            FAIL,
            f"{a.name} runs the {ia.driver} driver, {b.name} the {ib.driver} driver: a VM "
            "cannot move between them",
            "run the same driver on every node",
        )
    if ia.accelerator != ib.accelerator:
        return check(
            FAIL,
            f"{a.name} uses {ia.accelerator}, {b.name} {ib.accelerator}: QEMU cannot "
            "live-migrate between accelerators",
            "set the same accel in both agents' config, or use quick migration (--quick)",
        )
    ca, cb = guest_cpu(ia), guest_cpu(ib)
    if ca != cb:
        return check(
            FAIL,
            f"guests see CPU {ca} on {a.name} and {cb} on {b.name}: live migration "
            "impossible (a running guest cannot move to a different CPU model); use quick "
            "migration (hvc vm move --quick)",
            "set the same guest_cpu in every agent's config to migrate live",
        )
    lacking = [(n, i) for n, i in ((a, ia), (b, ib)) if i.guest_cpu_problem]
    if lacking:
        return check(
            FAIL,
            "; ".join(f"{n.name} cannot give guests CPU {i.guest_cpu}" for n, i in lacking)
            + ": no live migration to it",
            "set a guest_cpu every node can provide in every agent's config",
        )
    only_a = sorted(set(ia.cpu_flags) - set(ib.cpu_flags))
    only_b = sorted(set(ib.cpu_flags) - set(ia.cpu_flags))
    if only_a or only_b:
        differ = []
        if only_a:
            differ.append(f"only {a.name} has {_flag_list(only_a)}")
        if only_b:
            differ.append(f"only {b.name} has {_flag_list(only_b)}")
        return check(
            WARN,
            f"compatible (guests see {ca} on both), but the hosts' CPU flags differ: "
            + "; ".join(differ),
            "fine while guests get a named CPU model; never give guests the host's CPU "
            "(-cpu host) on these nodes",
        )
    return check(PASS, f"compatible: guests see {ca} on both, same {ia.accelerator} accelerator")


def _flag_list(flags: list[str], most: int = 8) -> str:
    shown = ", ".join(flags[:most])
    return shown + (f" and {len(flags) - most} more" if len(flags) > most else "")
