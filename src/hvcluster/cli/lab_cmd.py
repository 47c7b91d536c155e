"""``hvc lab``: start, inspect, break and stop a whole cluster on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from hvcluster.cli.output import console, friendly_errors, print_json, print_table
from hvcluster.lab import cluster, processes
from hvcluster.lab.demo import create_vms, demo_specs
from hvcluster.lab.state import DEFAULT_LAB_DIR, load
from hvcluster.models.config import ClusterConfig

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
    netns: bool = typer.Option(
        False, "--netns", help="Each node in its own network namespace (links can be cut)."
    ),
    lab_dir: Path = LabDir,
) -> None:
    """Start a local etcd and NODES agents; with --demo, create demo VMs."""
    if driver not in ("qemu", "sim"):
        raise typer.BadParameter("use qemu or sim", param_hint="--driver")
    kind: Literal["qemu", "sim"] = "qemu" if driver == "qemu" else "sim"
    network: cluster.Network = "netns" if netns else "loopback"
    state = cluster.up(
        nodes, kind, lab_dir, cache, ClusterConfig(), log=console.print, network=network
    )
    if demo:
        count = demo_vms or (3 if kind == "qemu" else 6)
        names = create_vms(state.api[0], demo_specs(state, count, cache), state.token, state.ca)
        console.print(f"demo VMs: {', '.join(names)}")
    console.print(
        f"admin token (hvc finds it in {Path(state.dir) / 'lab.json'}; other clients send "
        "'Authorization: Bearer <token>'):",
        highlight=False,
    )
    print(state.token)  # alone on its line, unwrapped, for scripts
    console.print(
        f"[bold]lab up[/]: REST API at {state.api[0]}/api/v1 (OpenAPI docs at "
        f"{state.api[0]}/docs; no web dashboard yet) — try 'hvc vm list', "
        f"'hvc events --follow', 'hvc lab fault kill n1', 'hvc lab down'"
    )


@app.command()
@friendly_errors
def status(lab_dir: Path = LabDir, json: bool = typer.Option(False, "--json")) -> None:
    """What runs in the lab."""
    state = load(lab_dir)
    rows = []
    for n in state.nodes:
        agent = (
            "stopped"
            if processes.stopped(n.agent_pid)
            else ("up" if processes.alive(n.agent_pid) else "down")
        )
        rows.append(
            [
                n.name,
                agent,
                n.agent_pid,
                "up" if processes.alive(n.watchdog_pid) else "down",
                len(cluster.vm_pids(n)),
                state.api_url(n),
            ]
        )
    etcd = ["up" if processes.alive(p) else "down" for p in state.etcd_pids]
    if json:
        print_json(
            {
                "driver": state.driver,
                "etcd": etcd,
                "endpoints": state.etcd_endpoints,
                "nodes": [
                    dict(zip(("name", "agent", "pid", "watchdog", "vms", "api"), r, strict=True))
                    for r in rows
                ],
            }
        )
        return
    console.print(
        f"etcd {', '.join(state.etcd_endpoints)}: {', '.join(etcd)}  driver: {state.driver}"
    )
    print_table("lab nodes", ["node", "agent", "pid", "watchdog", "VM processes", "API"], rows)


@app.command()
@friendly_errors
def down(lab_dir: Path = LabDir) -> None:
    """Stop everything the lab started (VMs too) and remove its state."""
    cluster.down(lab_dir, log=console.print)


@app.command()
@friendly_errors
def fault(
    action: str = typer.Argument(..., help="kill | kill-agent | stop | cont | partition | heal"),
    node: str = typer.Argument(..., help="The node, e.g. n1."),
    lab_dir: Path = LabDir,
) -> None:
    """Inject a fault: kill = host crash (agent, watchdog, VMs SIGKILLed); kill-agent = only
    the agent; stop = SIGSTOP the agent (a hung host); cont = SIGCONT it; partition = cut
    the node's network link (a lab started with --netns), heal = plug it back."""
    console.print(cluster.fault(load(lab_dir), action, node))


@app.command("start")
@friendly_errors
def start(
    node: str = typer.Argument(..., help="The node, e.g. n1."), lab_dir: Path = LabDir
) -> None:
    """Start a node's agent (and watchdog) again, e.g. after 'fault kill-agent'."""
    state = cluster.start_node(load(lab_dir), node)
    n = state.node(node)
    console.print(f"started {node}: agent pid {n.agent_pid}, watchdog pid {n.watchdog_pid}")
