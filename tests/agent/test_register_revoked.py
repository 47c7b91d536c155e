"""A node record is created only while this host's certificate is not revoked, in the same
transaction: an eviction (node record deleted, certificate revoked, at once) that lands
between the agent's check of its certificate and its registration cannot be undone by it
(seen in CI: the evicted node's record came back). A sim driver, the memory store."""

from __future__ import annotations

import pytest

from hvcluster.agent.node import NodeAgent, NodeIdentity
from hvcluster.agent.revocation import CertificateRevoked
from hvcluster.drivers.base import HostFacts
from hvcluster.drivers.sim.driver import SimDriver
from hvcluster.models.base import encode
from hvcluster.models.config import ClusterConfig
from hvcluster.models.join import RevokedCert
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore

pytestmark = pytest.mark.timeout(60)
KEYS = Keys("t")


async def test_a_revoked_host_does_not_write_its_node_record_again() -> None:
    store, driver = MemoryStore(), SimDriver()

    async def say(kind: str, subject: str, reason: str) -> None:
        return None

    revoked = KEYS.revoked_cert("0a1b")
    agent = NodeAgent(
        store, KEYS, NodeIdentity("n1", "127.0.0.1", 8440), driver, ClusterConfig(name="t"),
        say, lease=lambda: 0, may_start=lambda: None, revoked_key=revoked,
    )  # fmt: skip
    try:
        facts: HostFacts = await driver.inventory()
        await agent.register_node(facts)  # not revoked: registered
        assert await store.get(KEYS.node("n1")) is not None
        # evicted: the record deleted and the certificate revoked in one transaction
        await store.delete(KEYS.node("n1"))
        await store.put(revoked, encode(RevokedCert(serial="0a1b", node="n1", revoked_at=1.0)))
        with pytest.raises(CertificateRevoked, match="revoked"):
            await agent.register_node()
        assert await store.get(KEYS.node("n1")) is None
        # an existing record is still updated (the host's resources), never created
        assert await agent.report_resources(agent.resources) is None
        assert await store.get(KEYS.node("n1")) is None
    finally:
        agent.close()
        await driver.close()
        await store.close()
