"""An agent's liveness (keepalives, watchdog feeding) goes on whatever the rest of the agent
does: a slow accelerator probe at restart or a blocked main loop never starves the watchdog
(a real ``hvc watchdog`` process, real etcd, an in-process daemon with a sim driver)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from hvcluster.agent.config import AgentConfig
from hvcluster.agent.daemon import Daemon, cancel_all
from hvcluster.drivers.sim import SimDriver
from hvcluster.host.network import MemoryLinks
from hvcluster.host.pki import serial_of
from hvcluster.lab.etcd import EtcdCluster
from hvcluster.models.base import encode
from hvcluster.models.config import ClusterConfig
from hvcluster.models.join import RevokedCert
from hvcluster.store.base import Delete, Put
from hvcluster.store.etcd import EtcdStore
from hvcluster.store.keys import Keys
from tests.agent.daemons import SlowProbeDriver, node_watchdog, vm_process, wait_for, watchdog_log
from tests.etcd_fixtures import store_tls

pytestmark = pytest.mark.timeout(90)

FENCE_AFTER = 2.0


def _config(cluster: str) -> ClusterConfig:
    return ClusterConfig(
        name=cluster,
        lease_ttl_s=4.0,
        keepalive_interval_s=0.4,
        fence_after_s=FENCE_AFTER,
        recovery_margin_s=0.8,
        evidence_interval_s=0.4,
    )


@dataclass(frozen=True)
class Cluster:
    name: str
    etcd: EtcdCluster

    def agent(self, run_dir: Path) -> AgentConfig:
        tls = store_tls(self.etcd)
        return AgentConfig(
            node="n1", cluster=self.name, etcd=tuple(self.etcd.endpoints), run_dir=run_dir,
            driver="sim", controller=False,
            etcd_ca=tls.ca if tls else None, etcd_cert=tls.cert if tls else None,
            etcd_key=tls.key if tls else None,
        )  # fmt: skip


async def _cluster(etcd: EtcdCluster) -> Cluster:
    """A cluster of its own (a fresh prefix) on a shared etcd, its config written."""
    name = f"t{uuid.uuid4().hex[:8]}"
    store = EtcdStore(etcd.endpoints, tls=store_tls(etcd))
    try:
        await store.put(Keys(name).config, encode(_config(name)))
    finally:
        await store.close()
    return Cluster(name, etcd)


@pytest.fixture
async def cluster(etcd_session: EtcdCluster) -> Cluster:
    return await _cluster(etcd_session)


@pytest.fixture(params=["plain", "tls"])
async def any_cluster(request: pytest.FixtureRequest) -> Cluster:
    """On plain etcd, and on etcd with TLS and client certificates (liveness's own client
    must carry the agent's TLS settings)."""
    fixture = "etcd_session" if request.param == "plain" else "etcd_tls_session"
    return await _cluster(request.getfixturevalue(fixture))


def _registered(daemon: Daemon) -> bool:
    live = daemon.liveness
    return live is not None and live.registered.is_set()


async def test_a_slow_probe_at_restart_never_starves_the_watchdog(
    cluster: Cluster, tmp_path: Path
) -> None:
    cfg = cluster.agent(tmp_path / "n1")
    with node_watchdog(cfg.run_dir, FENCE_AFTER), vm_process(cfg.run_dir, "vm-a") as vm:
        first = Daemon(cfg, driver=SimDriver(), serve_api=False, links=MemoryLinks())
        task = asyncio.create_task(first.run())
        try:
            await wait_for(lambda: _registered(first), 30, "the first agent to register")
            assert first.liveness is not None
            lease = first.liveness.lease_id
        finally:
            await cancel_all([task])  # the agent dies; its lease, VM and watchdog stay
        # Restarted, its QEMU probe takes three times fence_after.
        driver = SlowProbeDriver(probe_s=3 * FENCE_AFTER)
        second = Daemon(cfg, driver=driver, serve_api=False, links=MemoryLinks())
        task = asyncio.create_task(second.run())
        try:
            await wait_for(lambda: driver.probed, 30, "the probe to end")
            await wait_for(
                lambda: second.agent is not None and second.agent.cycles >= 2, 30, "reconciling"
            )
            assert vm.poll() is None, f"the watchdog killed the VM: {watchdog_log(cfg.run_dir)}"
            assert "killed" not in watchdog_log(cfg.run_dir)
            assert second.liveness is not None and second.liveness.lease_id == lease  # adopted
        finally:
            await cancel_all([task])


async def test_a_blocked_main_loop_does_not_stop_feeding(
    any_cluster: Cluster, tmp_path: Path
) -> None:
    cfg = any_cluster.agent(tmp_path / "n1")
    with node_watchdog(cfg.run_dir, FENCE_AFTER), vm_process(cfg.run_dir, "vm-a") as vm:
        daemon = Daemon(cfg, driver=SimDriver(), serve_api=False, links=MemoryLinks())
        task = asyncio.create_task(daemon.run())
        try:
            await wait_for(
                lambda: daemon.agent is not None and daemon.agent.cycles >= 1, 30, "reconciling"
            )
            assert daemon.liveness is not None
            lease = daemon.liveness.lease_id
            # A handler (say, parsing a huge request body) holds the agent's loop.
            time.sleep(3 * FENCE_AFTER)  # noqa: ASYNC251 - that is the point
            agent, cycles = daemon.agent, daemon.agent.cycles
            agent.wake.set()  # the loop runs again: a whole cycle of the agent after the block
            await wait_for(lambda: agent.cycles >= cycles + 2, 10, "the agent cycling again")
            assert vm.poll() is None, f"the watchdog killed the VM: {watchdog_log(cfg.run_dir)}"
            assert "killed" not in watchdog_log(cfg.run_dir)
            assert daemon.liveness.lease_id == lease  # never lost
        finally:
            await cancel_all([task])


async def test_an_agent_evicted_while_running_does_not_register_its_node_again(
    etcd_tls_session: EtcdCluster, tmp_path: Path
) -> None:
    """Eviction deletes the node and alive records and revokes the certificate; the
    agent's liveness registers again when its alive key goes, and its node record must not
    come back with it (the node would be in the cluster again)."""
    cluster = await _cluster(etcd_tls_session)
    cfg = cluster.agent(tmp_path / "n1")
    keys = Keys(cluster.name)
    assert cfg.etcd_cert is not None
    with node_watchdog(cfg.run_dir, FENCE_AFTER):
        daemon = Daemon(cfg, driver=SimDriver(), serve_api=False, links=MemoryLinks())
        task = asyncio.create_task(daemon.run())
        store = EtcdStore(cluster.etcd.endpoints, tls=store_tls(cluster.etcd))
        try:
            await wait_for(
                lambda: daemon.agent is not None and daemon.agent.cycles >= 1, 30, "reconciling"
            )
            assert await store.get(keys.node("n1")) is not None
            serial = serial_of(cfg.etcd_cert.read_text())
            revoked = RevokedCert(serial=serial, node="n1", revoked_at=time.time())
            await store.txn(
                [],
                [
                    Delete(keys.node("n1")),
                    Delete(keys.alive("n1")),
                    Put(keys.revoked_cert(serial), encode(revoked)),
                ],
            )

            async def alive_again() -> bool:
                return await store.get(keys.alive("n1")) is not None

            for _ in range(300):  # liveness sees its key gone and registers again
                if await alive_again():
                    break
                await asyncio.sleep(0.05)
            assert await alive_again(), "liveness did not register again"
            await asyncio.sleep(1.0)  # what the re-registration triggers has run
            assert await store.get(keys.node("n1")) is None
        finally:
            await cancel_all([task])
            await store.close()
