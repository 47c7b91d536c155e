"""Network (agents reach each other, switches everywhere) and storage (volumes everywhere)."""

from __future__ import annotations

from hvcluster.models.storage import MARKER
from hvcluster.models.validation import Category, Check, Probe, ValidationFacts
from hvcluster.validate.common import FAIL, PASS, WARN, Thresholds, alive_nodes, check, mib, names

# --- network -----------------------------------------------------------------------------


def network(facts: ValidationFacts, t: Thresholds) -> list[Check]:
    cat = Category.NETWORK
    checks: list[Check] = []
    api = [p for p in facts.probes if p.kind == "api"]
    for p in sorted(api, key=lambda p: (p.source, p.target)):
        name = f"agent api {p.source} -> {p.target}"
        if not p.asked:
            unknown = f"unknown: {p.source}'s agent could not be asked ({p.error})"
            why = f"see why {facts.served_by} cannot reach {p.source} (check above)"
            checks.append(check(cat, name, WARN, unknown, why, (p.source,)))
        elif p.reachable:
            latency = f" in {p.latency_ms:.1f} ms" if p.latency_ms is not None else ""
            checks.append(
                Check(
                    category=cat,
                    name=name,
                    status=PASS,
                    message=f"{p.source} reaches {p.target} at {p.address}{latency}",
                )
            )
        else:
            checks.append(
                Check(
                    category=cat,
                    name=name,
                    status=FAIL,
                    message=f"{p.source} cannot reach {p.target}'s agent at {p.address}: "
                    f"{p.error or 'no connection'}",
                    action=f"check the agent on {p.target} listens on {p.address} and that "
                    f"nothing between {p.source} and {p.target} blocks it (live migrations "
                    "use the same address)",
                    nodes=(p.source, p.target),
                )
            )
    ports = [p for p in facts.probes if p.kind == "migration"]
    checks += [_migration_port(p) for p in sorted(ports, key=lambda p: (p.source, p.target))]
    nodes = alive_nodes(facts)
    if not facts.switches:
        checks.append(
            Check(category=cat, name="switches", status=PASS, message="no virtual switch defined")
        )
    for switch in sorted(facts.switches, key=lambda s: s.name):
        missing = [n for n in nodes if switch.name not in n.switches]
        name = f"switch {switch.name}"
        if not missing:
            checks.append(
                Check(
                    category=cat,
                    name=name,
                    status=PASS,
                    message=f"bridge {switch.bridge} ready on {names(n.name for n in nodes)}",
                )
            )
            continue
        why = "; ".join(
            f"{n.name} ({n.switch_problems.get(switch.name, 'not reported ready')})"
            for n in missing
        )
        uplink = f" with uplink {switch.uplink}" if switch.uplink else ""
        checks.append(
            Check(
                category=cat,
                name=name,
                status=FAIL,
                message=f"bridge {switch.bridge} ({switch.type.value}{uplink}) missing on {why}",
                action=f"VMs with a NIC on {switch.name} cannot run there: fix what the node "
                "says (agents need root to make bridges"
                + (f"; the host needs NIC {switch.uplink}" if switch.uplink else "")
                + ")",
                nodes=tuple(n.name for n in missing),
            )
        )
    return checks


def _migration_port(p: Probe) -> Check:
    """Did ``p.source`` reach a listener ``p.target`` opened as for an incoming migration?"""
    name = f"migration port {p.source} -> {p.target}"
    cat = Category.NETWORK
    if not p.asked:
        return Check(
            category=cat,
            name=name,
            status=WARN,
            message=f"unknown: {p.error}",
            action="see the agent api checks: both agents must answer for this probe",
            nodes=(p.source, p.target),
        )
    if p.reachable:
        latency = f" in {p.latency_ms:.1f} ms" if p.latency_ms is not None else ""
        return Check(
            category=cat,
            name=name,
            status=PASS,
            message=f"{p.source} reaches an incoming-migration listener on {p.target} at "
            f"{p.address}{latency}",
        )
    host = p.address.rpartition(":")[0].strip("[]") or p.address
    return Check(
        category=cat,
        name=name,
        status=FAIL,
        message=f"{p.source} cannot reach a migration listener on {p.target} at {p.address}: "
        f"{p.error or 'no connection'}",
        action=f"live migrations from {p.source} to {p.target} will fail: let TCP from "
        f"{p.source} reach {host} on {p.target}'s ephemeral ports (an incoming migration "
        f"listens on a free port: see net.ipv4.ip_local_port_range on {p.target}), not only "
        f"the agent's API port, and check that {host} (the address in {p.target}'s agent "
        "config) is an address of that host",
        nodes=(p.source, p.target),
    )


# --- storage -----------------------------------------------------------------------------


def storage(facts: ValidationFacts, t: Thresholds) -> list[Check]:
    cat = Category.STORAGE
    nodes = alive_nodes(facts)
    if not facts.volumes:
        none = "no shared volume defined (VM disks, if any, are not shared)"
        return [check(cat, "volumes", PASS, none)]
    checks: list[Check] = []
    for volume in sorted(facts.volumes, key=lambda v: v.name):
        name = f"volume {volume.name}"
        missing = [n for n in nodes if volume.name not in n.volumes]
        seen = [n for n in nodes if volume.name in n.volumes]
        if missing:
            why = "; ".join(
                f"{n.name} ({n.volume_problems.get(volume.name, 'not reported')})" for n in missing
            )
            checks.append(
                Check(
                    category=cat,
                    name=name,
                    status=FAIL,
                    message=f"volume {volume.name} ({volume.path}, id {volume.id}) not seen by "
                    f"{why}",
                    action=f"mount the same storage at {volume.path} on "
                    f"{names(n.name for n in missing)}; its {MARKER} must hold {volume.id}. "
                    "VMs with disks on it cannot run there",
                    nodes=tuple(n.name for n in missing),
                )
            )
        else:
            checks.append(
                Check(
                    category=cat,
                    name=name,
                    status=PASS,
                    message=f"seen with id {volume.id} by {names(n.name for n in seen)}",
                )
            )
        free = {
            n.name: n.volume_free_mib[volume.name] for n in seen if volume.name in n.volume_free_mib
        }
        if not free:
            continue
        least = min(free.values())
        low = sorted(n for n, mib in free.items() if mib < t.volume_free_warn_mib)
        if low:
            checks.append(
                Check(
                    category=cat,
                    name=f"free space {volume.name}",
                    status=WARN,
                    message=f"only {mib(least)} free on {volume.name} (as {names(low)} "
                    f"see it), below {mib(t.volume_free_warn_mib)}",
                    action=f"free space or grow {volume.path}: disks on it grow as guests write",
                    nodes=tuple(low),
                )
            )
        else:
            checks.append(
                Check(
                    category=cat,
                    name=f"free space {volume.name}",
                    status=PASS,
                    message=f"{mib(least)} free",
                )
            )
    return checks
