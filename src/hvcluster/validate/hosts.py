"""Inventory (what each node reports) and hypervisor (can VMs move between them)."""

from __future__ import annotations

from itertools import combinations, permutations

from hvcluster.models.guestcpu import cannot_provide, default_guest_cpu, provided
from hvcluster.models.node import Node
from hvcluster.models.validation import Category, Check, CheckStatus, ValidationFacts
from hvcluster.validate.common import FAIL, PASS, WARN, Thresholds, alike, alive_nodes, check, mib

# Guests see a named CPU model, not the host's CPU: the one they were cold-started with (the
# spec's cpu_model, or the starting node's guest_cpu), kept through live and quick
# migrations. A VM moves that way only to a node that can provide its model.


# --- inventory ---------------------------------------------------------------------------


def _describe(node: Node) -> str:
    inv = node.inventory
    cpu = inv.host_cpu or "unknown CPU"
    if inv.cpu_flags:
        cpu += f" ({len(inv.cpu_flags)} flags)"
    driver = f"{inv.driver} driver"
    if inv.driver == "qemu":
        driver += f", QEMU {inv.qemu_version}" if inv.qemu_version else ", no QEMU version"
    return (
        f"{cpu}, {node.capacity.cpus} CPUs, {mib(node.capacity.memory_mib)}; {driver}, "
        f"accelerator {inv.accelerator}, guest CPU {default_guest_cpu(inv)}"
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
        trouble = _trouble(node, facts)
        if trouble is None:
            checks.append(check(cat, f"node {node.name}", PASS, _describe(node)))
        else:
            checks.append(check(cat, f"node {node.name}", *trouble, (node.name,)))
    versions: dict[str, list[str]] = {}
    for node in alive_nodes(facts):
        if node.inventory.driver == "qemu" and node.inventory.qemu_version:
            versions.setdefault(node.inventory.qemu_version, []).append(node.name)
    return checks + alike(
        cat,
        "qemu versions",
        versions,
        "QEMU versions differ: {listed}; a live migration to an older QEMU can fail",
        "install the same QEMU version on every node",
        "QEMU {value} on every qemu node",
    )


def _trouble(node: Node, facts: ValidationFacts) -> tuple[CheckStatus, str, str] | None:
    """What is wrong with ``node`` as it reports itself (status, message, action), if any."""
    if node.name not in facts.alive:
        return (
            WARN,
            f"{node.name} is not alive (its lease is gone): left out of the other checks; "
            f"last reported {_describe(node)}",
            f"start the agent on {node.name}, or ignore if it is down on purpose",
        )
    if node.watchdog is not None and not node.watchdog.acknowledging:
        silent_s = max(0.0, facts.time - node.watchdog.since)
        return (
            FAIL,
            f"{node.name}'s watchdog has not acknowledged feeding for {silent_s:.0f}s: "
            f"{node.watchdog.problem}; {node.name} starts and takes no VM",
            f"run hvc watchdog --run-dir <the agent's run_dir> on {node.name} (the same run "
            "dir as its agent)",
        )
    if node.inventory.guest_cpu_problem:
        return (
            FAIL,
            f"{node.name} cannot give guests CPU {default_guest_cpu(node.inventory)}: "
            f"{node.inventory.guest_cpu_problem}",
            f"set guest_cpu in {node.name}'s agent config to a model every node can provide "
            "(the same on all of them), then restart that agent",
        )
    if node.inventory.driver == "qemu" and not node.inventory.qemu_version:
        return (
            WARN,
            f"{node.name} reports no QEMU version: {_describe(node)}",
            f"check qemu-system-x86_64 runs on {node.name}",
        )
    return None


# --- hypervisor --------------------------------------------------------------------------


def hypervisor(facts: ValidationFacts, t: Thresholds) -> list[Check]:
    cat = Category.HYPERVISOR
    nodes = alive_nodes(facts)
    checks: list[Check] = []
    accels: dict[str, list[str]] = {}
    for node in nodes:
        accels.setdefault(node.inventory.accelerator, []).append(node.name)
    checks += alike(
        cat,
        "accelerator",
        accels,
        "nodes use different accelerators: {listed}; VMs fail over between them, but cannot "
        "live-migrate",
        "set the same accel (kvm or tcg) in every agent's config",
        "every node runs guests with {value}",
    )
    for a, b in combinations(nodes, 2):
        checks.append(_pair(a, b))
    for a, b in permutations(nodes, 2):
        if a.inventory.driver == b.inventory.driver:  # else the pair fails already
            checks.append(_models(a, b, facts.guest_cpus.get(a.name, {})))
    return checks


def _pair(a: Node, b: Node) -> Check:
    """Can a VM live-migrate between ``a`` and ``b`` (both ways), as far as the driver, the
    accelerator and the hosts' CPU flags go? (CPU models: :func:`_models`, per direction.)"""
    ia, ib = a.inventory, b.inventory
    name = f"live migration {a.name} <-> {b.name}"
    pair = (a.name, b.name)

    def verdict(status: CheckStatus, message: str, action: str = "") -> Check:
        return Check(
            category=Category.HYPERVISOR,
            name=name,
            status=status,
            message=message,
            action=action,
            nodes=pair if status is not PASS else (),
        )

    if ia.driver != ib.driver:
        return verdict(
            FAIL,
            f"{a.name} runs the {ia.driver} driver, {b.name} the {ib.driver} driver: a VM "
            "cannot move between them",
            "run the same driver on every node",
        )
    if ia.accelerator != ib.accelerator:
        return verdict(
            FAIL,
            f"{a.name} uses {ia.accelerator}, {b.name} {ib.accelerator}: QEMU cannot "
            "live-migrate between accelerators",
            "set the same accel in both agents' config, or use quick migration (--quick)",
        )
    only_a = sorted(set(ia.cpu_flags) - set(ib.cpu_flags))
    only_b = sorted(set(ib.cpu_flags) - set(ia.cpu_flags))
    if only_a or only_b:
        differ = []
        if only_a:
            differ.append(f"only {a.name} has {_flag_list(only_a)}")
        if only_b:
            differ.append(f"only {b.name} has {_flag_list(only_b)}")
        return verdict(
            WARN,
            "same driver and accelerator, but the hosts' CPU flags differ: " + "; ".join(differ),
            "fine while guests get a named CPU model that both provide (see the CPU model "
            "checks); never give guests the host's CPU (-cpu host) on these nodes",
        )
    return verdict(PASS, f"compatible: same {ia.driver} driver and {ia.accelerator} accelerator")


def _models(a: Node, b: Node, running: dict[str, str]) -> Check:
    """Can ``b`` run, after a live or quick migration from ``a``, every CPU model ``a``'s
    guests run with (``running``: vm -> model) and ``a``'s default (the model of any VM it
    starts next)?"""
    default = default_guest_cpu(a.inventory)
    users: dict[str, list[str]] = {default: []}
    for vm, model in sorted(running.items()):
        users.setdefault(model or default, []).append(vm)
    missing = {m: vms for m, vms in users.items() if cannot_provide(b, m) is not None}
    name = f"CPU models {a.name} -> {b.name}"
    if not missing:
        every = f"every CPU model {a.name}'s guests run with ({', '.join(sorted(users))})"
        return check(Category.HYPERVISOR, name, PASS, f"{b.name} can provide {every}")
    models = sorted(missing)
    what = f"model {models[0]}" if len(models) == 1 else f"models {', '.join(models)}"
    who = sorted(vm for vms in missing.values() for vm in vms)
    runs = f"; {a.name} runs {', '.join(who)} with it" if who else ""
    offer = ", ".join(provided(b.inventory)) or "none"
    return check(
        Category.HYPERVISOR,
        name,
        FAIL,
        f"live and quick migration impossible from {a.name} to {b.name} ({what} "
        f"not available on {b.name}): cold move only{runs}",
        f"make {b.name} provide {what.split(' ', 1)[1]} (it provides {offer}): its "
        "host CPU or accelerator must support it; or give every node the same guest_cpu "
        "(agent config) and set a cpu_model every node provides in the VMs' specs (it "
        f"applies at their next cold start); meanwhile move VMs from {a.name} to {b.name} "
        "cold (stop, then start there)",
        (a.name, b.name),
    )


def _flag_list(flags: list[str], most: int = 8) -> str:
    shown = ", ".join(flags[:most])
    return shown + (f" and {len(flags) - most} more" if len(flags) > most else "")
