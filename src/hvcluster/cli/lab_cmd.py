"""``hvc lab``: start, inspect, break and stop a whole cluster on this machine."""

from __future__ import annotations

import json as json_module
import os
from pathlib import Path
from typing import Literal

import typer

from hvcluster.cli.output import console, friendly_errors, print_json, print_table
from hvcluster.guestimage.debian import require_debian_image
from hvcluster.lab import chaos as chaos_run
from hvcluster.lab import chaos_plan, chaos_report, cluster, faults, members, processes
from hvcluster.lab.demo import create_vms, demo_specs
from hvcluster.lab.state import DEFAULT_LAB_DIR, load
from hvcluster.models.config import PROFILES, ClusterConfig

app = typer.Typer(help="A whole cluster on this machine: etcd and N agents.", no_args_is_help=True)

LabDir = typer.Option(DEFAULT_LAB_DIR, "--dir", help="Where the lab keeps its state.")


@app.command()
@friendly_errors
def up(
    nodes: int = typer.Option(3, min=1, max=16, help="How many nodes."),
    driver: str = typer.Option("qemu", help="qemu (real VMs) or sim (simulated)."),
    demo: bool = typer.Option(False, help="Create demo VMs."),
    demo_vms: int = typer.Option(0, help="How many demo VMs (default: 3 qemu, 6 sim)."),
    cache: Path = typer.Option(Path("/var/cache/hvcluster"), help="The guest image cache."),
    guest: str = typer.Option(
        "busybox",
        help="The demo VMs' guest (qemu): busybox (fast) or debian (`hvc image build --os "
        "debian` first; boots from its disk).",
    ),
    netns: bool | None = typer.Option(
        None,
        "--netns/--loopback",
        help="Each node and etcd member in its own network namespace (links can be cut), "
        "or all on loopback. Default: --netns as root, --loopback otherwise.",
    ),
    private_mounts: bool | None = typer.Option(
        None,
        "--private-mounts/--shared-mounts",
        help="Each node in its own mount namespace, seeing of the lab dir only its run dir, "
        "its certificates and the shared volume, as a separate host would; or every node "
        "sees the whole lab dir. Default: --private-mounts as root, --shared-mounts otherwise.",
    ),
    migration_network: bool = typer.Option(
        False,
        "--migration-network",
        help="With --netns: a second link per node, on a network of its own, that live "
        "migrations stream over (each agent's migration_address).",
    ),
    etcd: int = typer.Option(3, help="How many etcd members: 1, 3 or 5."),
    profile: str = typer.Option(
        "default",
        help="Timings: default (lease TTL 4 s, fence_after 3 s, keepalive 0.5 s) or fast "
        "(2 s, 1.5 s, 0.5 s: faster failover, more etcd load, a 1 s stall can fence a host).",
    ),
    lab_dir: Path = LabDir,
) -> None:
    """Start ETCD etcd members and NODES agents; with --demo, create demo VMs."""
    if driver not in ("qemu", "sim"):
        raise typer.BadParameter("use qemu or sim", param_hint="--driver")
    if etcd not in members.SIZES:
        raise typer.BadParameter("use 1, 3 or 5", param_hint="--etcd")
    if guest not in ("busybox", "debian"):
        raise typer.BadParameter("use busybox or debian", param_hint="--guest")
    if profile not in PROFILES:
        raise typer.BadParameter(f"use {' or '.join(PROFILES)}", param_hint="--profile")
    kind: Literal["qemu", "sim"] = "qemu" if driver == "qemu" else "sim"
    if demo and kind == "qemu" and guest == "debian":
        require_debian_image(cache)  # before any process starts: says how to build it
    if netns is None:
        netns = os.geteuid() == 0
        if not netns:
            console.print("network: loopback (not root: no namespaces, links cannot be cut)")
    network: cluster.Network = "netns" if netns else "loopback"
    if private_mounts is None:
        private_mounts = cluster.can_make_namespaces()
    if not private_mounts:
        console.print(
            "mounts: shared (every node sees the whole lab dir: a node can read files "
            "another node wrote, which separate hosts cannot)"
        )
    state = cluster.up(
        nodes,
        kind,
        lab_dir,
        cache,
        ClusterConfig.with_profile(profile),
        log=console.print,
        network=network,
        etcd_members=etcd,
        private_mounts=private_mounts,
        migration_network=migration_network,
    )
    if demo:
        count = demo_vms or (3 if kind == "qemu" else 6)
        specs = demo_specs(state, count, cache, guest)
        names = create_vms(state.api[0], specs, state.token, state.ca)
        console.print(f"demo VMs: {', '.join(names)}")
    console.print(
        f"admin token (hvc finds it in {Path(state.dir) / 'lab.json'}; other clients send "
        "'Authorization: Bearer <token>'):",
        highlight=False,
    )
    print(state.token)  # alone on its line, unwrapped, for scripts
    console.print(
        f"[bold]lab up[/]: web dashboard at {state.api[0]}/ (log in with the admin token "
        f"above; its certificate is signed by the lab's CA, {state.ca}), REST API at "
        f"{state.api[0]}/api/v1 (OpenAPI docs at {state.api[0]}/docs) — try 'hvc vm list', "
        f"'hvc events --follow', 'hvc lab fault kill n1', 'hvc lab down'",
        highlight=False,
    )


@app.command()
@friendly_errors
def status(lab_dir: Path = LabDir, json: bool = typer.Option(False, "--json")) -> None:
    """What runs in the lab."""
    state = load(lab_dir)
    rows = []
    for n in state.nodes:
        rows.append(
            [
                n.name,
                _process_state(n.agent_pid),
                n.agent_pid,
                "up" if processes.alive(n.watchdog_pid) else "down",
                len(cluster.vm_pids(n)),
                state.api_url(n),
            ]
        )
    etcd = [_process_state(p) for p in state.etcd_pids]
    if json:
        print_json(
            {
                "driver": state.driver,
                "etcd": etcd,
                "endpoints": state.etcd_endpoints,
                "members": [m.name for m in state.etcd_members],
                "nodes": [
                    dict(zip(("name", "agent", "pid", "watchdog", "vms", "api"), r, strict=True))
                    for r in rows
                ],
            }
        )
        return
    said = (f"{m.name} {m.client_url} {e}" for m, e in zip(state.etcd_members, etcd, strict=False))
    console.print(f"etcd: {', '.join(said)}  driver: {state.driver}")
    print_table("lab nodes", ["node", "agent", "pid", "watchdog", "VM processes", "API"], rows)


def _process_state(pid: int) -> str:
    if processes.stopped(pid):
        return "stopped"
    return "up" if processes.alive(pid) else "down"


@app.command()
@friendly_errors
def down(lab_dir: Path = LabDir) -> None:
    """Stop everything the lab started (VMs too) and remove its state."""
    cluster.down(lab_dir, log=console.print)


@app.command()
@friendly_errors
def fault(
    action: str = typer.Argument(..., help=" | ".join(faults.FAULTS)),
    target: str = typer.Argument(..., help="The node (n1), etcd member (etcd0) or VM."),
    ms: int = typer.Argument(0, help="delay: how long the stall lasts, in milliseconds."),
    source: str = typer.Option(
        "all", "--from", help="partition: cut the node from etcd, the other nodes, or all."
    ),
    lab_dir: Path = LabDir,
) -> None:
    """Inject a fault, recorded as a 'lab.fault' event. Nodes: kill = host crash (agent,
    watchdog, VMs SIGKILLed); kill-agent = only the agent; stop = SIGSTOP the agent (a hung
    host); cont = SIGCONT it; delay NODE MS = a stall (SIGSTOP, SIGCONT after MS; no netem
    here); partition = cut the node's link (--from all) or drop its packets to etcd or the
    other nodes (a lab with --netns), heal = undo. etcd: etcd-kill (SIGKILL), etcd-stop
    (SIGSTOP), etcd-cont (SIGCONT), etcd-start (again, same data dir; A,B,C: at once)
    MEMBER. vm-kill VM: its QEMU (or sim placeholder) process dies, found from the hosts'
    process tables."""
    said = faults.fault(load(lab_dir), action, target, ms=ms or None, source=source)
    console.print(said, highlight=False)


@app.command("start")
@friendly_errors
def start(
    node: str = typer.Argument(..., help="The node, e.g. n1."), lab_dir: Path = LabDir
) -> None:
    """Start a node's agent (and watchdog) again, e.g. after 'fault kill-agent'."""
    state = cluster.start_node(load(lab_dir), node)
    n = state.node(node)
    console.print(f"started {node}: agent pid {n.agent_pid}, watchdog pid {n.watchdog_pid}")


@app.command()
@friendly_errors
def chaos(
    duration: str = typer.Option("10m", help="How long: 90s, 10m, 1h."),
    seed: int = typer.Option(1, help="The same seed on the same lab: the same faults."),
    fault_kinds: str = typer.Option(
        ",".join(chaos_plan.KINDS), "--faults", help="Some of kill,stop,partition,etcd,vm."
    ),
    vms: int = typer.Option(2, min=1, max=20, help="How many HA test guests to create."),
    slo: float = typer.Option(30.0, help="Every HA VM running again within this (s)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the report here."),
    migrations: bool = typer.Option(
        True,
        help="Also move HA guests live at random times (every 5 to 15 s), so that "
        "faults hit migrations in flight.",
    ),
    cache: Path = typer.Option(Path("/var/cache/hvcluster"), help="The guest image cache."),
    profile: str | None = typer.Option(
        None,
        help="The timing profile the lab must run (default or fast: set by 'hvc lab up "
        "--profile'; agents take their timings when they start). Default: whatever it runs.",
    ),
    lab_dir: Path = LabDir,
) -> None:
    """Random faults at random times against the running lab, one at a time, each undone,
    while a checker watches from outside: never two QEMU processes running one disk's guest
    (the hosts' process tables; a migration's waiting target is not one), guest disk
    counters never going back, every HA VM running again within the SLO, admin intent kept
    (a stopped VM, a paused node), the API answering; HA guests moved live meanwhile.
    Raises the lab's quarantine and restart thresholds for the run (and says so). Ends with
    a table and JSON; exits 1 on any violation."""
    try:
        kinds = chaos_plan.parse_kinds(fault_kinds)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--faults") from None
    seconds = _seconds(duration)
    state = load(lab_dir)
    if profile is not None and profile != state.profile:
        raise typer.BadParameter(
            f"this lab runs the {state.profile} profile: start it with "
            f"'hvc lab up --profile {profile}'",
            param_hint="--profile",
        )
    options = chaos_run.Options(
        duration_s=seconds,
        seed=seed,
        kinds=kinds,
        vms=vms,
        slo_s=slo,
        cache=cache,
        migrations=migrations,
    )
    result = chaos_run.run(lab_dir, options, log=lambda s: console.print(s, highlight=False))
    out = json_out or lab_dir / "chaos.json"
    out.write_text(json_module.dumps(result, indent=2))
    print_table("chaos: faults by kind", chaos_report.HEADERS, chaos_report.rows(result))
    console.print(chaos_report.verdict(result), highlight=False)
    for v in result["violations"]:
        console.print(f"[red]violation[/] {v['rule']} {v['subject']}: {v['detail']}")
    console.print(f"report: {out}")
    if result["violations"]:
        raise typer.Exit(1)


def _seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise typer.BadParameter(
            f"use e.g. 90s, 10m or 1h, got {text!r}", param_hint="--duration"
        ) from None
