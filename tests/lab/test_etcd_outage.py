"""etcd outages in a real lab: three etcd members (each in its own network namespace), three
agents with watchdogs, sim VMs whose placeholder processes run on every node. Safety rule 5
(ARCHITECTURE.md): members that crash (their reachable host refuses the connection) are
evidence that nobody can act, so losing quorum that way kills no VM and moves none; every
node registers again once quorum returns. Which VM processes run is read from the hosts'
run dirs and process table, never from the cluster's records."""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from hvcluster.cli.main import app as cli_app
from hvcluster.lab import faults, processes
from hvcluster.models.config import ClusterConfig
from hvcluster.store.etcd import EtcdStore
from hvcluster.store.etcd_conn import EtcdTls
from tests.lab.conftest import Lab, make_lab, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

NODES = ("n1", "n2", "n3")
VMS = {f"out-{n}": n for n in NODES}  # one VM at home on every node
OUTAGE_S = 30.0  # without quorum, in each outage test
# What a false failover or a fence leaves in the log.
NEVER = {"vm.recovered", "vm.moved", "vm.killed", "vm.restarted", "node.dead", "vm.failed"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from outage_lab(tmp_path_factory.mktemp("etcd-lab"))


def outage_lab(tmp: Path, config: ClusterConfig | None = None) -> Iterator[Lab]:
    """Three etcd members and three nodes, each in its namespace; a sim VM at home on every
    node (a real placeholder process); stopped after. ``config``: the default timings unless
    given."""
    labs = make_lab(tmp, "sim", network="netns", etcd=3, config=config)
    lab = next(labs)
    try:
        for vm, node in VMS.items():
            spec = {"name": vm, "memory_mib": 64, "ha": {"preferred_owners": [node]}}
            lab.post("/vms", spec)
        for vm in VMS:
            wait_for(functools.partial(placed, lab, vm), 60, f"{vm} running")
        yield lab
    finally:
        labs.close()  # make_lab's own finally: the lab down


def placed(lab: Lab, vm: str) -> tuple[str, int] | None:
    """(node, placement epoch) once the VM runs where it is placed, at that epoch."""
    v = lab.vm(vm)
    status, placement = v.get("status") or {}, v.get("placement") or {}
    same = all(status.get(k) == placement.get(k) for k in ("node", "epoch"))
    if status.get("state") == "running" and same:
        return placement["node"], placement["epoch"]
    return None


def running_once(lab: Lab, vm: str) -> tuple[str, int] | None:
    """(node, pid) once the VM's one process runs on the node its status and placement name
    (after a fence the status can still say running while no process is left)."""
    found = faults.find_vm(lab.state, vm)
    where = placed(lab, vm)
    return found[0] if len(found) == 1 and where and found[0][0] == where[0] else None


def host_processes(lab: Lab) -> dict[str, list[tuple[str, int]]]:
    """Every VM's (node, pid) from the nodes' run dirs and ``/proc``."""
    return {vm: faults.find_vm(lab.state, vm) for vm in VMS}


def alive_nodes(lab: Lab) -> list[str]:
    return sorted(n["name"] for n in lab.get("/nodes")["nodes"] if n["alive"])


def last_seq(lab: Lab) -> int:
    return max((e["seq"] for e in lab.events()), default=0)


def events_since(lab: Lab, seq: int) -> list[dict[str, Any]]:
    return [e["event"] for e in lab.events() if e["seq"] > seq]


def outage(lab: Lab, phases: list[list[str]], hold_s: float) -> list[dict[str, Any]]:
    """Kill the members of each phase in turn, each phase held ``hold_s`` while every VM
    process is watched, then start them all again at once; assert nothing was killed or
    moved; the events written since."""
    wait_for(lambda: alive_nodes(lab) == list(NODES), 60, "every node alive before")
    for vm in VMS:
        wait_for(functools.partial(running_once, lab, vm), 60, f"{vm} running")
    epochs = {vm: placed(lab, vm) for vm in VMS}
    before = host_processes(lab)
    assert all(len(where) == 1 for where in before.values()), before
    agents = {n.name: (n.agent_pid, n.watchdog_pid) for n in lab.state.nodes}
    seq = last_seq(lab)
    down = [m for phase in phases for m in phase]
    try:
        for phase in phases:
            for member in phase:
                lab.fault("etcd-kill", member)
            unchanged_for(lab, hold_s, before, agents)
    finally:  # all at once, as when power returns or an init system restarts them
        dead = [m for m in down if not processes.alive(lab.state.member(m).pid)]
        if dead:
            lab.fault("etcd-start", ",".join(dead))
    started = time.monotonic()
    wait_for(lambda: alive_nodes(lab) == list(NODES), 60, "every node alive after quorum")
    print(f"every node alive {time.monotonic() - started:.1f}s after the last member started")
    for vm, was in epochs.items():
        assert wait_for(functools.partial(placed, lab, vm), 30, f"{vm} running") == was, vm
    events = events_since(lab, seq)
    said = "".join(f"\n{e['kind']} {e['subject']}: {e['reason'][:200]}" for e in events)
    assert host_processes(lab) == before, f"VM processes changed after: {said}{why(lab)}"
    assert not [e for e in events if e["kind"] in NEVER], events
    return events


def unchanged_for(
    lab: Lab,
    seconds: float,
    before: dict[str, list[tuple[str, int]]],
    agents: dict[str, tuple[int, int]],
) -> None:
    """Every half second for ``seconds``: the hosts' VM processes are those of ``before``,
    and every agent and watchdog lives."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        now = host_processes(lab)
        assert now == before, f"VM processes changed during the outage: {now}{why(lab)}"
        for node, pids in agents.items():
            assert all(processes.alive(p) for p in pids), f"agent or watchdog of {node} died"
        time.sleep(0.5)


def said_back(lab: Lab, seq: int) -> dict[str, str]:
    """node -> what it said when its keepalives were confirmed again (``node.etcd_back``),
    once every node said it."""
    backs = {
        e["subject"]: e["reason"] for e in events_since(lab, seq) if e["kind"] == "node.etcd_back"
    }
    return backs if set(backs) == {f"node/{n}" for n in NODES} else {}


def why(lab: Lab) -> str:
    """What the agents and watchdogs said about liveness: for a failure message."""
    said = []
    for n in lab.state.nodes:
        for name in ("agent.log", "watchdog.out"):
            lines = (Path(n.run_dir) / name).read_text(errors="replace").splitlines()
            keep = [x for x in lines if any(w in x for w in ("liveness", "watchdog", "fenc"))]
            said += [f"{n.name}/{name}: {x[:300]}" for x in keep[-8:]]
    return "\n" + "\n".join(said)


def fault_events(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["data"]["fault"], e["subject"]) for e in events if e["kind"] == "lab.fault"]


def recorded_faults(lab: Lab, events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The faults in the log, then those still waiting for etcd to take them (one that met
    a member still starting)."""
    waiting = faults.pending_events(Path(lab.state.dir) / faults.PENDING)
    return fault_events(events) + [(e.data["fault"], e.subject) for e in waiting]


def netns_of(pid: int | str) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def test_the_lab_runs_three_members_each_in_its_own_namespace(lab: Lab) -> None:
    state = lab.state
    assert state.net is not None and len(state.etcd_members) == 3
    addresses = {m.address for m in state.etcd_members}
    assert len(addresses) == 3 and all(a.startswith(state.net.subnet + ".") for a in addresses)
    namespaces = {netns_of(m.pid) for m in state.etcd_members}
    assert len(namespaces) == 3 and netns_of("self") not in namespaces
    for n in state.nodes:  # every agent was given every member
        config = Path(n.config).read_text()
        assert all(m.client_url in config for m in state.etcd_members)


def test_a_killed_vm_process_restarts_on_its_node_and_says_so(lab: Lab) -> None:
    node, old_pid = wait_for(lambda: running_once(lab, "out-n2"), 60, "out-n2 running")
    seq = last_seq(lab)
    said = lab.fault("vm-kill", "out-n2")
    assert f"pid {old_pid} on {node}" in said and not processes.alive(old_pid)

    def restarted() -> list[tuple[str, int]]:
        now = faults.find_vm(lab.state, "out-n2")
        return now if now and now[0][1] != old_pid else []

    assert wait_for(restarted, 30, "out-n2 running again")[0][0] == node == "n2"
    wait_for(lambda: placed(lab, "out-n2"), 30, "out-n2 running (its status)")
    events = events_since(lab, seq)
    assert ("vm-kill", "vm/out-n2") in fault_events(events)
    restarts = [e for e in events if e["kind"] == "vm.restarted" and e["subject"] == "vm/out-n2"]
    assert restarts, events


def etcd_leader(lab: Lab) -> str | None:
    state = lab.state
    tls = EtcdTls(Path(state.ca), Path(state.client_cert), Path(state.client_key))

    async def ask() -> str | None:
        store = EtcdStore(list(state.etcd_endpoints), tls=tls)
        try:
            return (await store.health()).leader
        finally:
            await store.close()

    return asyncio.run(ask())


def test_every_fault_leaves_an_event_and_a_short_stall_moves_nothing(lab: Lab) -> None:
    wait_for(lambda: alive_nodes(lab) == list(NODES), 60, "every node alive")
    leader = wait_for(lambda: etcd_leader(lab), 30, "an etcd leader")
    follower = next(m.name for m in lab.state.etcd_members if m.name != leader)
    for vm in VMS:
        wait_for(functools.partial(running_once, lab, vm), 60, f"{vm} running")
    before = host_processes(lab)
    seq = last_seq(lab)
    for action in ("etcd-stop", "etcd-cont", "etcd-kill", "etcd-start"):
        lab.fault(action, follower)
    said = lab.fault("delay", "n1", ms=500)  # well below fence_after
    assert "500 ms" in said and processes.alive(lab.state.node("n1").agent_pid)
    wait_for(lambda: alive_nodes(lab) == list(NODES), 30, "every node alive after")
    events = events_since(lab, seq)
    assert fault_events(events) == [
        ("etcd-stop", f"etcd/{follower}"),
        ("etcd-cont", f"etcd/{follower}"),
        ("etcd-kill", f"etcd/{follower}"),
        ("etcd-start", f"etcd/{follower}"),
        ("delay", "node/n1"),
    ]
    assert all(e["actor"] == "hvc lab" for e in events if e["kind"] == "lab.fault")
    assert host_processes(lab) == before
    assert not [e for e in events if e["kind"] in NEVER], events


def test_two_of_three_members_crashed_then_all_three_kill_no_vm_and_move_none(lab: Lab) -> None:
    """30 s without quorum: two members crashed (killed) for half of it, then the third too;
    then all started again at once (power back, or an init system). Safety rule 5: while
    members are down their hosts refuse, which is evidence; a member restarting neither
    refuses nor answers until it has a quorum and has published itself, which is none, so
    the nodes live on the last evidence (every member refused: nobody leads, a lease TTL)
    until their keepalives are confirmed again, under a second later here.

    Restarted one after another, the nodes live on less (a majority refused: fence_after)
    from when the second member starts listening, and etcd takes longer: a member's first
    publish proposal, made before there is a leader, is dropped and retried only after its
    request timeout. Seen in this lab under load: over 3 s, and every node fenced (safely:
    nothing ran twice, everything restarted at home). Rule 5 cannot promise more without
    evidence, and a restarting member gives none."""
    seq = last_seq(lab)
    events = outage(lab, [["etcd0", "etcd1"], ["etcd2"]], OUTAGE_S / 2)
    # each node says it rode the outage out, and on what
    backs = wait_for(lambda: said_back(lab, seq), 30, "every node saying it is back")
    assert all("kept its VMs on evidence" in reason for reason in backs.values()), backs
    # in the order done: the events that found no quorum waited for the next fault that did
    assert recorded_faults(lab, events) == [
        ("etcd-kill", "etcd/etcd0"),
        ("etcd-kill", "etcd/etcd1"),
        ("etcd-kill", "etcd/etcd2"),
        ("etcd-start", "etcd/etcd0,etcd1,etcd2"),
    ]


def test_a_node_cut_off_from_every_member_is_fenced_and_its_vm_runs_once(lab: Lab) -> None:
    """``partition n3 --from etcd``: n3 still reaches the other nodes, not one etcd member,
    while the rest keep quorum. Its watchdog kills its VM before it runs elsewhere."""
    wait_for(lambda: alive_nodes(lab) == list(NODES), 60, "every node alive")
    node, old_pid = wait_for(lambda: running_once(lab, "out-n3"), 60, "out-n3 running")
    assert node == "n3"
    seq = last_seq(lab)
    most = 0
    fenced_after = None
    try:
        cut = time.monotonic()
        faults.fault(lab.state, "partition", "n3", source="etcd", record=False)
        end = time.monotonic() + 60
        while time.monotonic() < end:  # until it runs elsewhere, never two at once
            found = faults.find_vm(lab.state, "out-n3")
            most = max(most, len(found))
            if fenced_after is None and not processes.alive(old_pid):
                fenced_after = time.monotonic() - cut
            if found and found[0][0] != "n3":
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"out-n3 did not run elsewhere: {found}{why(lab)}")
        elsewhere = time.monotonic() - cut
        assert "from etcd" in lab.fault("partition", "n3", source="etcd")  # now recorded
        assert not processes.alive(old_pid) and most == 1
        # rule 2: the last confirmed keepalive was sent before the cut took effect (when nft
        # ran in n3's namespace, a process started after ``cut``), then the watchdog's kill
        # and this probe: up to a second on this loaded machine (3.51 s seen once)
        assert fenced_after is not None and fenced_after <= lab.state.fence_after_s + 1.0
        print(f"\nn3 cut off: fenced after {fenced_after:.1f}s, out-n3 elsewhere {elsewhere:.1f}s")
        assert processes.alive(lab.state.node("n3").agent_pid)  # cut off, not dead
    finally:
        lab.fault("heal", "n3")
    wait_for(lambda: alive_nodes(lab) == list(NODES), 60, "n3 back after the heal")
    moved = wait_for(lambda: placed(lab, "out-n3"), 30, "out-n3 running")
    assert moved[0] != "n3" and moved[1] == 2
    assert [n for n, _ in faults.find_vm(lab.state, "out-n3")] == [moved[0]]
    events = events_since(lab, seq)
    assert ("partition", "node/n3") in fault_events(events)
    assert [e["subject"] for e in events if e["kind"] == "vm.recovered"] == ["vm/out-n3"]


def test_hvc_lab_fault_says_what_it_did_and_refuses_bad_input_by_name(lab: Lab) -> None:
    def hvc(*args: str) -> Result:
        return CliRunner().invoke(cli_app, ["lab", *args], env={"COLUMNS": "200"})

    done = hvc("fault", "delay", "n2", "300", "--dir", str(lab.dir))
    assert done.exit_code == 0, done.output
    assert "for 300 ms" in done.output and "event lab.fault written" in done.output
    for args, said in (
        (("fault", "delay", "n2"), "milliseconds"),
        (("fault", "etcd-stop", "etcd7"), "no etcd member 'etcd7'"),
        (("fault", "vm-kill", "nope"), "no process of VM 'nope'"),
        (("fault", "partition", "n1", "--from", "moon"), "--from"),
        (("fault", "explode", "n1"), "unknown fault 'explode'"),
    ):
        result = hvc(*args, "--dir", str(lab.dir))
        assert result.exit_code != 0 and said in result.output, (args, result.output)
        assert "Traceback" not in result.output
    refused = hvc("up", "--etcd", "2", "--dir", str(lab.dir / "never"))
    assert refused.exit_code != 0 and "--etcd" in refused.output
    refused = hvc("up", "--profile", "slow", "--dir", str(lab.dir / "never"))
    assert refused.exit_code != 0 and "--profile" in refused.output
    assert "default or fast" in refused.output
