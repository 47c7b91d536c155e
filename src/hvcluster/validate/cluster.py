"""Time skew between the agents' clocks, and etcd's health."""

from __future__ import annotations

from hvcluster.models.validation import Category, Check, ValidationFacts
from hvcluster.validate.common import (
    ETCD_DEFAULT_QUOTA,
    FAIL,
    PASS,
    WARN,
    Thresholds,
    check,
    size_of,
)

# --- time ----------------------------------------------------------------------------------


def time_skew(facts: ValidationFacts, t: Thresholds) -> list[Check]:
    cat = Category.TIME
    ref = facts.served_by
    if not facts.clocks:
        return [check(cat, "clocks", PASS, "one node: no clock to compare")]
    checks: list[Check] = []
    for clock in sorted(facts.clocks, key=lambda c: c.node):
        name = f"clock {clock.node}"
        if clock.offset_s is None:
            unread = f"could not read {clock.node}'s clock: {clock.error or 'no answer'}"
            why = f"see why {ref} cannot reach {clock.node} (network checks)"
            checks.append(check(cat, name, WARN, unread, why, (clock.node,)))
            continue
        # At least this far apart, whatever the network delay was.
        skew = max(0.0, abs(clock.offset_s) - clock.uncertainty_s)
        said = f"{clock.node} is {clock.offset_s:+.3f} s (± {clock.uncertainty_s:.3f} s) from {ref}"
        if skew > t.skew_fail_s:
            status, action = FAIL, "run NTP (chrony, systemd-timesyncd) on every node"
        elif skew > t.skew_warn_s:
            status, action = WARN, "check NTP on both nodes"
        else:
            status, action = PASS, ""
        limit = t.skew_fail_s if status is FAIL else t.skew_warn_s
        if status is not PASS:
            said += f": more than {limit} s; event times and quarantine windows disagree"
        checks.append(
            check(cat, name, status, said, action, (clock.node,) if status is not PASS else ())
        )
    return checks


# --- etcd ----------------------------------------------------------------------------------


def etcd(facts: ValidationFacts, t: Thresholds) -> list[Check]:
    cat = Category.ETCD
    e = facts.etcd
    if e.error:
        return [
            Check(
                category=cat,
                name="health",
                status=FAIL,
                message=f"cannot read etcd's health: {e.error}",
                action="check the etcd members (hvc store check)",
            )
        ]
    members = sorted(e.members, key=lambda m: m.name)
    checks: list[Check] = []
    down = [m for m in members if not m.reachable]
    count = len(members)
    if not down:
        status, msg, action = PASS, f"{count} member(s), all reachable", ""
    elif e.has_quorum:
        status = WARN
        msg = f"{len(down)} of {count} members unreachable: " + "; ".join(
            f"{m.name}: {m.error or 'no answer'}" for m in down
        )
        action = "bring them back: one more lost member may stop the cluster"
    else:
        status = FAIL
        msg = f"{len(down)} of {count} members unreachable, no quorum: " + "; ".join(
            f"{m.name}: {m.error or 'no answer'}" for m in down
        )
        action = "restore a majority of the etcd members; until then nothing can change"
    checks.append(Check(category=cat, name="members", status=status, message=msg, action=action))
    if count == 1 or (count and count % 2 == 0):
        checks.append(
            Check(
                category=cat,
                name="member count",
                status=WARN,
                message=f"{count} member(s): "
                + (
                    "losing it stops the cluster"
                    if count == 1
                    else "an even count tolerates no more failures than one less"
                ),
                action="run 3 or 5 members (a small witness member counts)",
            )
        )
    if e.leader:
        checks.append(
            Check(category=cat, name="leader", status=PASS, message=f"leader is {e.leader}")
        )
    else:
        checks.append(
            Check(
                category=cat,
                name="leader",
                status=FAIL,
                message="no member has a leader",
                action="restore a majority of the etcd members (hvc store check)",
            )
        )
    timed = [m for m in members if m.reachable and m.latency_ms is not None]
    if timed:
        slow = [m for m in timed if (m.latency_ms or 0.0) > t.etcd_latency_warn_ms]
        listed = ", ".join(f"{m.name} {m.latency_ms:.1f} ms" for m in timed)
        checks.append(
            Check(
                category=cat,
                name="latency",
                status=WARN if slow else PASS,
                message=listed
                + (f": above {t.etcd_latency_warn_ms:.0f} ms, leases may expire" if slow else ""),
                action="put etcd on fast disks and a quiet network" if slow else "",
            )
        )
    sized = [m for m in members if m.db_size is not None]
    if sized:
        largest = max(sized, key=lambda m: m.db_size or 0)
        size = largest.db_size or 0
        status = (
            FAIL if size >= t.etcd_db_fail_bytes else WARN if size >= t.etcd_db_warn_bytes else PASS
        )
        checks.append(
            Check(
                category=cat,
                name="db size",
                status=status,
                message=f"largest database {size_of(size)} ({largest.name}), etcd's "
                f"default quota is {size_of(ETCD_DEFAULT_QUOTA)}",
                action="compact and defragment etcd (etcdctl compact, defrag)"
                if status is not PASS
                else "",
            )
        )
    return checks
