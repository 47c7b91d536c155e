"""``hvc vm move --max-bandwidth``: the cap parsed (binary units, per second), sent with the
request and shown; a bad value refused naming the option, nothing requested."""

from __future__ import annotations

from typing import Any

import pytest

from hvcluster.cli.move_cmd import bandwidth_mib_s, load_said
from hvcluster.models.base import encode
from hvcluster.models.node import Capacity, Node
from tests.cli.conftest import KEYS, ApiServer
from tests.cli.test_move import cluster

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("text", "mib"),
    [("100M", 100), ("100", 100), ("1G", 1024), ("1.5G", 1536), ("2048K", 2), ("64MiB/s", 64)],
)
def test_bandwidths_in_binary_units(text: str, mib: int) -> None:
    assert bandwidth_mib_s(text) == mib


@pytest.mark.parametrize("text", ["fast", "0", "512K", "1.3M", "-1M", "10T", "100Mbit"])
def test_bad_bandwidths_say_why(text: str) -> None:
    with pytest.raises(ValueError, match=repr(text).replace("(", r"\(")):
        bandwidth_mib_s(text)


def test_move_with_a_cap_shows_it(server: ApiServer, hvc: Any) -> None:
    cluster(server, "web")
    r = hvc("vm", "move", "web", "--to", "m2", "--max-bandwidth", "1G")
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())  # (as wrapped to the terminal's width)
    assert "of web (live, m1 -> m2, capped at 1024 MiB/s): requested" in said
    mid = said.split()[1]
    shown = hvc("migration", "show", mid)
    assert "bandwidth cap" in shown.output and "1024 MiB/s" in shown.output, shown.output


def test_a_bad_cap_is_refused_and_nothing_moves(server: ApiServer, hvc: Any) -> None:
    cluster(server, "db")
    r = hvc("vm", "move", "db", "--to", "m2", "--max-bandwidth", "lots")
    assert r.exit_code == 2 and "--max-bandwidth: 'lots' is not a bandwidth" in r.output
    quick = hvc("vm", "move", "db", "--quick", "--max-bandwidth", "10M")
    assert quick.exit_code == 2 and "caps a live migration only" in quick.output
    assert "db" not in hvc("migration", "list").output


def test_progress_says_the_rate_it_sends_at() -> None:
    said = load_said({"transfer_rate_mib_s": 95.4, "passes": 2, "dirty_rate_mib_s": 3})
    assert said == ", sending 95 MiB/s, pass 2, dirtying 3 MiB/s"


def test_node_show_says_where_migrations_reach_it(server: ApiServer, hvc: Any) -> None:
    store = server.store
    assert store is not None
    server.add_node("m8")
    server.add_node("m9")
    node = Node(
        name="m9",
        address="127.0.0.1",
        migration_address="10.9.0.9",
        capacity=Capacity(cpus=2, memory_mib=2048),
    )
    server.run(store.put(KEYS.node("m9"), encode(node)))
    assert "127.0.0.1 (its address)" in hvc("node", "show", "m8").output
    shown = hvc("node", "show", "m9")
    assert "migration address" in shown.output and "10.9.0.9" in shown.output, shown.output
