"""``hvc node join`` for a host that is to run an etcd member: the learner is added, the
command says how to start its etcd, and ``--promote`` follows it, saying why it waits,
until it votes (here the joining command drives the promotion: no controller runs)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from hvcluster.cli.main import app as cli_app
from hvcluster.host.pki import Authority
from hvcluster.models.base import encode
from hvcluster.models.join import ClusterCa
from tests.cli.conftest import KEYS, ApiServer


def test_join_then_follow_the_learner_until_it_votes(
    server: ApiServer, hvc: Any, tmp_path: Path
) -> None:
    assert server.store is not None
    store = server.store
    pki = Authority(tmp_path / "ca")
    pki.ensure_ca()
    ca = ClusterCa(cert_pem=pki.ca_cert.read_text(), key_pem=pki.ca_key.read_text())
    server.run(store.put(KEYS.cluster_ca, encode(ca)))
    for node in ("n1", "n2"):  # with the joining host, 3: the cluster wants 3 voters
        server.add_node(node)
    made = hvc("cluster", "join-token", "n3", "--json")
    assert made.exit_code == 0, made.output
    token = json.loads(made.stdout)["token"]
    assert json.loads(made.stdout)["etcd_member"] is True
    base = ["node", "join", "--cluster", server.url, "--token", token, "--dir", str(tmp_path)]
    joined = CliRunner().invoke(cli_app, [*base, "--address", "127.0.0.1"])
    assert joined.exit_code == 0, joined.output
    assert "start etcd with the flags in" in joined.stdout
    flags = (tmp_path / "etcd.flags").read_text()
    assert "--initial-cluster-state=existing" in flags
    member = next(m for m in server.run(store.members()) if m.learner)

    def caught_up() -> None:  # what its etcd, started, does after a while
        assert server.loop is not None
        server.loop.call_soon_threadsafe(store.catch_up, member.id, "n3")

    later = threading.Timer(1.5, caught_up)
    later.start()
    try:
        follow = CliRunner().invoke(cli_app, [*base, "--promote", "--timeout", "30"])
    finally:
        later.cancel()
    assert follow.exit_code == 0, follow.output
    assert "waiting for the vote" in follow.stderr and "cannot be promoted yet" in follow.stderr
    assert "promoted: 2 voting member(s) for 3 host(s)" in follow.stdout
    assert "it votes now" in follow.stdout
    assert [m.learner for m in server.run(store.members()) if m.id == member.id] == [False]
