"""Joining a host (join token, CSR signed once, etcd learner then promoted) and evicting one
(drain first, refusals naming the VMs, member removed, certificate revoked), over a
MemoryStore whose member list is etcd's stateful fake."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from hvcluster.host.pki import Authority, make_request
from hvcluster.models.base import encode
from hvcluster.models.join import ClusterCa, RevokedCert
from hvcluster.models.lifecycle import NodeAdminState
from hvcluster.models.node import Node
from hvcluster.models.token import Role
from hvcluster.models.vm import Placement
from hvcluster.store.memory_store import MemoryStore
from tests.api.conftest import KEYS, add_node, kinds
from tests.tokens import auth, make_token


@pytest.fixture
async def ca(store: MemoryStore, tmp_path: Path) -> Authority:
    pki = Authority(tmp_path / "pki")
    pki.ensure_ca()
    record = ClusterCa(cert_pem=pki.ca_cert.read_text(), key_pem=pki.ca_key.read_text())
    await store.put(KEYS.cluster_ca, encode(record))
    return pki


@pytest.fixture
async def anonymous(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client with no API token: what a joining host is."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api/api/v1") as client:
        yield client


async def join(
    api: httpx.AsyncClient, anonymous: httpx.AsyncClient, node: str, where: Path, **token: object
) -> tuple[dict[str, str], dict[str, Any]]:
    """What ``hvc node join`` does up to its certificate: a join token from the admin (with
    ``token``'s options), then ``POST /join`` with a CSR for ``node`` (address
    ``10.0.0.<its number>``), both asserted to succeed: the body posted and the answer."""
    made = await api.post("/cluster/join-tokens", json={"node": node, **token})
    assert made.status_code == 201, made.text
    _, csr = make_request(where / node, node)
    body = {"token": made.json()["token"], "csr": csr, "address": f"10.0.0.{node[1:]}"}
    joined = await anonymous.post("/join", json=body)
    assert joined.status_code == 200, joined.text
    return body, joined.json()


def verify(ca: Authority, cert_pem: str, where: Path) -> str:
    (where / "got.crt").write_text(cert_pem)
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca.ca_cert), str(where / "got.crt")],
        capture_output=True, text=True, timeout=30, check=False,
    ).stdout  # fmt: skip


async def test_a_host_joins_with_a_learner_promoted_once_caught_up(
    api: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    store: MemoryStore,
    ca: Authority,
    tmp_path: Path,
) -> None:
    for node in ("n1", "n2"):  # with the joining host, 3: the cluster wants 3 voters
        await add_node(store, node)
    made = await api.post("/cluster/join-tokens", json={"node": "n4"})
    assert made.status_code == 201, made.text
    assert made.json()["etcd_member"] is True  # by default: 1 member, fewer than 5
    token = made.json()["token"]
    got_ca = (await anonymous.get("/cluster/ca")).json()
    assert token.endswith("." + got_ca["fingerprint"])
    _, csr = make_request(tmp_path / "host", "n4")
    body = {"token": token, "csr": csr, "address": "10.0.0.4"}
    joined = await anonymous.post("/join", json=body)
    assert joined.status_code == 200, joined.text
    answer = joined.json()
    assert "OK" in verify(ca, answer["cert_pem"], tmp_path)
    assert "BEGIN X509 CRL" in answer["crl_pem"]
    assert answer["etcd"]["initial_cluster"] == "memory=memory://1,n4=https://10.0.0.4:2380"
    member = answer["etcd"]["member_id"]
    assert [m.learner for m in await store.members() if m.id == member] == [True]
    again = await anonymous.post("/join", json=body)
    assert again.status_code == 409 and "used already" in again.json()["error"]
    early = await anonymous.post("/join/promote", json={"token": token})
    assert early.status_code == 409 and "cannot be promoted yet" in early.json()["error"]
    store.catch_up(member, "n4")
    promoted = await anonymous.post("/join/promote", json={"token": token})
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["voting"] is True
    assert "promoted: 2 voting member(s) for 3 host(s)" in promoted.json()["reason"]
    assert [m.learner for m in await store.members() if m.id == member] == [False]
    spent = await anonymous.post("/join/promote", json={"token": token})
    assert spent.status_code == 401
    assert {"node.join.token", "etcd.member.added", "node.join.certificate",
            "etcd.member.promoted"} <= set(await kinds(store))  # fmt: skip


async def test_join_refusals_name_the_field_or_the_reason(
    api: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    store: MemoryStore,
    ca: Authority,
    tmp_path: Path,
) -> None:
    made = await api.post("/cluster/join-tokens", json={"node": "n5", "etcd_member": False})
    token = made.json()["token"]
    assert made.json()["etcd_member"] is False
    _, wrong_name = make_request(tmp_path, "n6")
    bad = await anonymous.post("/join", json={"token": token, "csr": wrong_name, "address": "h"})
    assert bad.status_code == 422 and bad.json()["field"] == "csr"
    assert "CN=n5" in bad.json()["error"]
    garbled = await anonymous.post("/join", json={"token": "n5.x", "csr": "x", "address": "h"})
    assert garbled.status_code == 422 and garbled.json()["field"] == "token"
    node, secret, fp = token.split(".")[1:]
    forged = f"hvcjoin.{node}.{secret[:-2]}xx.{fp}"
    wrong = await anonymous.post("/join", json={"token": forged, "csr": "x", "address": "h"})
    assert wrong.status_code == 401
    await add_node(store, "n1")
    taken = await api.post("/cluster/join-tokens", json={"node": "n1"})
    assert taken.status_code == 409 and "evict it" in taken.json()["error"]
    reader = auth(await make_token(store, KEYS, "r", Role.READER))
    denied = await anonymous.post("/cluster/join-tokens", json={"node": "n7"}, headers=reader)
    assert denied.status_code == 403
    _, csr = make_request(tmp_path, "n5")
    ok = await anonymous.post("/join", json={"token": token, "csr": csr, "address": "h"})
    assert ok.status_code == 200 and ok.json()["etcd"] is None
    # No etcd member: the token is spent with the certificate.
    spent = await anonymous.post("/join", json={"token": token, "csr": csr, "address": "h"})
    assert spent.status_code == 401


async def test_no_ca_no_join_tokens(api: httpx.AsyncClient) -> None:
    made = await api.post("/cluster/join-tokens", json={"node": "n4"})
    assert made.status_code == 409 and "hvc cluster init" in made.json()["error"]


async def test_evict_drains_first_refuses_while_vms_stay_then_removes_and_revokes(
    api: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    store: MemoryStore,
    ca: Authority,
    tmp_path: Path,
) -> None:
    body, joined = await join(api, anonymous, "n4", tmp_path, etcd_member=True)
    store.catch_up(joined["etcd"]["member_id"], "n4")
    # 1 host (itself) wants 1 voter: it stays a learner, and the answer says why
    stays = await anonymous.post("/join/promote", json={"token": body["token"]})
    assert stays.status_code == 200 and stays.json()["voting"] is False
    assert "stays a learner: 1 voting member(s) already" in stays.json()["reason"]
    await add_node(store, "n4")
    await store.put(KEYS.placement("web-1"), encode(Placement(node="n4", epoch=1)))
    first = await api.post("/cluster/nodes/n4/evict")
    assert first.status_code == 409 and "draining it now" in first.json()["error"]
    node = Node.model_validate_json((await store.get(KEYS.node("n4"))).value)  # type: ignore[union-attr]
    assert node.admin_state is NodeAdminState.DRAINING
    second = await api.post("/cluster/nodes/n4/evict")
    assert (
        second.status_code == 409 and "is draining, 1 VM(s) left (web-1)" in second.json()["error"]
    )
    # The VM moved, the controller has not said the drain is complete yet: not yet either
    await store.put(KEYS.placement("web-1"), encode(Placement(node="n1", epoch=2)))
    moved = await api.post("/cluster/nodes/n4/evict")
    assert moved.status_code == 409 and "once the drain is complete" in moved.json()["error"]
    await store.put(KEYS.placement("web-1"), encode(Placement(node="n4", epoch=3)))
    stayed = node.model_copy(
        update={
            "admin_state": NodeAdminState.PAUSED,
            "admin_reason": "drain of n4 is complete; 1 VM(s) stayed: web-1",
        }
    )
    await store.put(KEYS.node("n4"), encode(stayed))
    third = await api.post("/cluster/nodes/n4/evict")
    assert third.status_code == 409 and "web-1 cannot move off it" in third.json()["error"]
    await store.put(KEYS.placement("web-1"), encode(Placement(node="n1", epoch=4)))
    done = await api.post("/cluster/nodes/n4/evict")
    assert done.status_code == 200, done.text
    assert done.json()["revoked_serial"] == joined["serial"]
    assert await store.get(KEYS.node("n4")) is None
    assert await store.get(KEYS.alive("n4")) is None
    assert "n4" not in {m.name for m in await store.members()}
    revoked = await store.get(KEYS.revoked_cert(joined["serial"]))
    assert revoked is not None and RevokedCert.model_validate_json(revoked.value).node == "n4"
    assert {"node.draining", "etcd.member.removed", "node.evicted",
            "node.certificate.revoked"} <= set(await kinds(store))  # fmt: skip
    gone = await api.post("/cluster/nodes/n4/evict")
    assert gone.status_code == 404


async def test_the_third_hosts_join_promotes_the_second_hosts_learner_first(
    api: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    store: MemoryStore,
    ca: Authority,
    tmp_path: Path,
) -> None:
    """etcd takes one learner at a time: the 2nd host's, kept a learner (2 hosts want 1
    voter), is promoted as the 3rd host joins, which then gets its own learner (as
    docs/install.md's 3 hosts found: the 3rd host's join was refused)."""
    await add_node(store, "n1")
    members: dict[str, int] = {}
    for node in ("n2", "n3"):
        body, joined = await join(api, anonymous, node, tmp_path)
        members[node] = joined["etcd"]["member_id"]
        store.catch_up(members[node], node)
        if node == "n2":
            stays = await anonymous.post("/join/promote", json={"token": body["token"]})
            assert stays.json()["voting"] is False, stays.text
    learner = {m.id: m.learner for m in await store.members()}
    assert learner[members["n2"]] is False and learner[members["n3"]] is True
