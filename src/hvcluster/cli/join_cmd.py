"""``hvc cluster join-token``, ``hvc node join``, ``hvc node evict``: hosts joining and
leaving the cluster (docs/architecture.md, "Joining and evicting hosts")."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from hvcluster.cli.client import ApiError, Client, UsageError, api_option
from hvcluster.cli.output import console, err_console, fail, friendly_errors, print_json
from hvcluster.cli.views import answer, json_option, reason_option
from hvcluster.host import etcd_unit
from hvcluster.host import join as joining

DEFAULT_DIR = Path("/etc/hvcluster")  # pki/ under it, and etcd.flags (as cluster init)


@friendly_errors
def join_token(
    node: str = typer.Argument(..., help="The name the new host will have."),
    ttl: float = typer.Option(3600.0, "--ttl", help="Seconds the token stays good."),
    etcd_member: bool | None = typer.Option(
        None,
        "--etcd-member/--no-etcd-member",
        help="Whether the host runs an etcd member; default: when the cluster needs one "
        "(3 voters from 3 hosts, 5 from 5).",
        show_default=False,
    ),
    as_json: bool = json_option(),
    api: list[str] | None = api_option(),
) -> None:
    """Make a one-use join token for a new host (admin); give it to 'hvc node join'."""
    body: dict[str, Any] = {"node": node, "ttl_s": ttl}
    if etcd_member is not None:
        body["etcd_member"] = etcd_member
    answer(api, lambda client: client.post("/cluster/join-tokens", body), as_json, _show_token)


def _show_token(made: dict[str, Any]) -> None:
    node = made["node"]
    member = " with an etcd member" if made["etcd_member"] else ""
    until = time.strftime("%H:%M:%S", time.localtime(made["expires_at"]))
    err_console.print(f"join token for {node}{member}, good once until {until}:")
    console.print(made["token"], soft_wrap=True)


@friendly_errors
def join(
    cluster: str = typer.Option(..., "--cluster", help="An agent's API URL (https://HOST:PORT)."),
    token: str = typer.Option(
        ..., "--token", help="From 'hvc cluster join-token'.", envvar="HVC_JOIN_TOKEN"
    ),
    address: str = typer.Option(
        "", "--address", help="This host's address in the cluster (to join)."
    ),
    directory: Path = typer.Option(
        DEFAULT_DIR,
        "--dir",
        help="Config dir: key and certificates go to its pki/, etcd flags to etcd.flags.",
    ),
    etcd_data_dir: Path = typer.Option(
        Path("/var/lib/hvcluster/etcd"), "--etcd-data-dir", help="The etcd member's data."
    ),
    promote: bool = typer.Option(
        False,
        "--promote",
        help="Joined already and etcd runs: follow its learner until it votes (the cluster "
        "promotes it once it has caught up) or the cluster says why not, at most --timeout.",
    ),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds to wait for the vote."),
    as_json: bool = json_option(),
) -> None:
    """Join this host: its key and certificate signing request are made here, the cluster
    signs it. If it is to run an etcd member (a learner until promoted), etcd's flags are
    written to <dir>/etcd.flags; with the hvc-etcd unit installed ('hvc host install
    --etcd-member') it is started and this waits until the member votes, else start etcd
    with them and run this again with --promote (the cluster promotes it by itself too)."""
    ca = directory / "pki" / "ca.crt"
    if promote:
        _follow(cluster, ca, token, timeout, as_json)
        return
    if not address:
        raise UsageError("--address: this host's address is needed to join", field="address")
    joined = joining.join(cluster, token, address, directory / "pki")
    flags: list[str] = []
    if joined.etcd is not None:
        host = f"[{address}]" if ":" in address else address
        flags = joining.etcd_flags(
            joined, etcd_data_dir, f"https://{host}:2379", f"https://{host}:2380"
        )
        (directory / "etcd.flags").write_text("\n".join(flags) + "\n")
    if as_json:
        endpoints = list(joined.etcd_endpoints)
        print_json({"node": joined.node, "serial": joined.serial, "cert": str(joined.cert),
                    "etcd_endpoints": endpoints, "etcd_flags": flags})  # fmt: skip
        return
    console.print(f"joined as {joined.node}: certificate {joined.serial} in {joined.cert}")
    console.print(f"etcd endpoints: {', '.join(joined.etcd_endpoints)}")
    if joined.etcd is None:
        return
    console.print(
        f'etcd learner added; set etcd_crl = "{joined.crl}" in agent.toml (the agent keeps '
        "that CRL up to date)"
    )
    if etcd_unit.usable(directory / "etcd.flags"):
        etcd_unit.start()
        console.print(f"started {etcd_unit.ETCD_UNIT} (its flags: {directory / 'etcd.flags'})")
        _follow(cluster, ca, token, timeout, as_json=False)
        return
    console.print(
        f"start etcd with the flags in {directory / 'etcd.flags'} ('systemctl start "
        f"{etcd_unit.ETCD_UNIT}' once 'hvc host install --etcd-member' ran): the cluster "
        "promotes it once it has caught up; 'hvc node join --promote' follows it until it votes"
    )


def _follow(cluster: str, ca: Path, token: str, timeout: float, as_json: bool) -> None:
    """Wait for the joined learner's vote, saying each new reason it is not there yet."""

    def progress(said: str) -> None:
        err_console.print(f"waiting for the vote: {said}", highlight=False)

    done = joining.promote(cluster, ca, token, timeout, progress)
    if as_json:
        print_json({"voting": done.voting, "reason": done.reason, "waited_s": done.waited_s})
    elif done.voting:
        console.print(f"{done.reason}: it votes now (after {done.waited_s:.1f}s)")
    else:
        console.print(f"not a voter yet: {done.reason}")


@friendly_errors
def evict(
    name: str = typer.Argument(..., help="Node name."),
    reason: str = reason_option(),
    timeout: float = typer.Option(1800.0, "--timeout", help="Seconds to wait for the drain."),
    as_json: bool = json_option(),
    api: list[str] | None = api_option(),
) -> None:
    """Remove a host from the cluster for good: drain it (VMs move live), then remove its
    node record and etcd member and revoke its certificate. Refuses while VMs cannot move."""
    body = {"reason": reason} if reason else None
    end = time.monotonic() + timeout
    with Client.from_options(api) as client:
        while True:
            try:
                done = client.post(f"/cluster/nodes/{name}/evict", body)
                break
            except ApiError as e:
                if e.status != 409 or "drain" not in str(e) or "cannot move" in str(e):
                    raise
                if time.monotonic() > end:
                    raise fail(f"gave up after {timeout:.0f}s: {e}") from None
                err_console.print(f"{e}", highlight=False)
                time.sleep(1.0)
    if as_json:
        print_json(done)
        return
    member = (
        f", etcd member {done['etcd_member_removed']} removed"
        if done["etcd_member_removed"]
        else ""
    )
    revoked = f", certificate {done['revoked_serial']} revoked" if done["revoked_serial"] else ""
    console.print(f"node {name} evicted{member}{revoked}")
