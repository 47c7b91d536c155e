"""``hvc store check`` and ``EtcdStore.health`` against real etcd: one member, a dead
endpoint, and three members losing one, then two (quorum)."""

from __future__ import annotations

import asyncio
import json

import pytest
import typer
from typer.testing import CliRunner

from hvcluster.cli.store_cmd import app
from hvcluster.lab.etcd import EtcdCluster, free_ports
from hvcluster.models.errors import StoreUnavailable
from hvcluster.store.base import StoreHealth
from hvcluster.store.etcd import EtcdStore
from hvcluster.store.health import has_quorum, nobody_can_act
from tests.etcd_fixtures import running_etcd
from tests.waiting import wait_for, wait_for_sync

pytestmark = pytest.mark.etcd
WIDE = {"COLUMNS": "200"}


# Mounted as cli/main.py mounts it (a Typer app of one command would collapse into it).
hvc = typer.Typer()
hvc.add_typer(app, name="store")


def check(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(hvc, ["store", "check", *args], env=WIDE)
    return result.exit_code, result.output


def health(endpoints: list[str], timeout: float = 1.0) -> StoreHealth:
    async def ask() -> StoreHealth:
        store = EtcdStore(endpoints, timeout=timeout)
        try:
            async with asyncio.timeout(timeout * 4 + 2):  # it must never hang
                return await store.health(timeout=timeout)
        finally:
            await store.close()

    return asyncio.run(ask())


def test_check_shows_the_member_and_its_leader(etcd_session: EtcdCluster) -> None:
    code, out = check("--endpoints", etcd_session.endpoints[0])
    assert code == 0, out
    assert "etcd0" in out and "leader" in out
    assert "quorum: 1 of 1" in out

    code, out = check("--endpoints", f"http://{etcd_session.endpoints[0]}", "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["leader"] == "etcd0" and data["quorum"] is True
    (member,) = data["members"]
    assert member["reachable"] and member["is_leader"] and member["db_size"] > 0
    assert member["latency_ms"] is not None


def test_check_of_a_dead_endpoint_fails_clearly() -> None:
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    code, out = check("--endpoints", dead, "--timeout", "0.5")
    assert code == 5  # unreachable
    assert "cannot reach any etcd endpoint" in out and dead in out
    assert "Traceback" not in out

    code, out = check("--endpoints", "not-an-endpoint")
    assert code != 0
    assert "endpoints" in out and "host:port" in out
    assert "Traceback" not in out


def _by_name(h: StoreHealth) -> dict[str, bool]:
    return {m.name: m.reachable for m in h.members}


async def _put_retrying(endpoints: list[str], key: str, limit: float = 20.0) -> None:
    """A write as a caller makes it while a new leader is being elected: retry on unknown."""
    store = EtcdStore(endpoints, timeout=3)

    async def written() -> bool:
        await store.put(key, b"x")
        return await store.get(key) is not None

    try:
        await wait_for(written, limit, f"{key} written", every=0.2, tolerate=(StoreUnavailable,))
    finally:
        await store.close()


@pytest.mark.timeout(120)
def test_three_members_losing_one_then_quorum() -> None:
    with running_etcd(3) as cluster:
        h = health(cluster.endpoints)
        assert _by_name(h) == {"etcd0": True, "etcd1": True, "etcd2": True}
        leaders = [m for m in h.members if m.is_leader]
        assert len(leaders) == 1 and h.leader == leaders[0].name
        assert {m.leader_id for m in h.members} == {leaders[0].id}
        assert has_quorum(h) and not nobody_can_act(h)

        procs = {p.name: p for p in cluster}
        leader = procs[leaders[0].name]
        follower, other = (p for p in cluster if p is not leader)

        follower.pause()  # frozen: its sockets accept, nothing answers
        try:
            h = health(cluster.endpoints)
            assert _by_name(h)[follower.name] is False
            assert has_quorum(h)
        finally:
            follower.resume()

        leader.kill()
        asyncio.run(_put_retrying(cluster.endpoints, "/three/after-leader-died"))
        code, out = check("--endpoints", ",".join(cluster.endpoints), "--timeout", "1")
        assert code == 0, out
        assert "refused" in out and leader.name in out, out  # killed: nothing listens

        other.kill()

        def leaderless() -> StoreHealth | None:  # after an election timeout
            h = health(cluster.endpoints)
            return h if next(m for m in h.members if m.reachable).leader_id == 0 else None

        h = wait_for_sync(leaderless, 20, "the last member without a leader", every=0.3)
        alive = next(m for m in h.members if m.reachable)
        assert alive.name == follower.name and alive.leader_id == 0
        assert not has_quorum(h)
        assert [m.refused for m in h.members if not m.reachable] == [True, True]
        assert nobody_can_act(h), "two crashed members cannot vote: nobody can act"
        code, out = check("--endpoints", ",".join(cluster.endpoints), "--timeout", "1")
        assert code == 1  # reached, but no quorum
        assert "no quorum" in out and "Traceback" not in out

        leader.start(wait=False)
        other.start(wait=False)
        for p in cluster:
            p.wait_healthy(30)
        assert has_quorum(health(cluster.endpoints))


def test_check_over_tls_needs_the_client_certificate(etcd_tls_session: EtcdCluster) -> None:
    files = etcd_tls_session.client_tls
    assert files is not None
    url = f"https://{etcd_tls_session.endpoints[0]}"
    code, out = check(
        "--endpoints", url, "--ca", str(files.ca), "--cert", str(files.cert),
        "--key", str(files.key), "--json",
    )  # fmt: skip
    assert code == 0, out
    assert json.loads(out)["quorum"] is True

    code, out = check("--endpoints", url, "--ca", str(files.ca), "--timeout", "1")
    assert code == 5 and "client certificate" in out and "Traceback" not in out

    code, out = check("--endpoints", url, "--timeout", "1")
    assert code != 0 and "CA" in out and "Traceback" not in out
