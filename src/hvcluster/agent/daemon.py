"""``hvc agent``: the one daemon of a host. It runs the node agent, stands for election as
controller, and serves the API, all on one asyncio loop and one etcd client; its liveness
(lease keepalives, watchdog feeding) runs apart, on a thread, loop and etcd client of its own,
started first (:mod:`hvcluster.agent.liveness_thread`).

Stopping it (SIGTERM, or kill -9) never stops the VMs: QEMU runs detached. An agent started
again within ``fence_after`` adopts its lease and re-attaches to its VMs; nothing moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import uvicorn

from hvcluster.agent.checkpoints import CheckpointWorker
from hvcluster.agent.config import AgentConfig
from hvcluster.agent.consoles import local_console
from hvcluster.agent.host_liveness import HostLiveness
from hvcluster.agent.liveness import NodeLiveness
from hvcluster.agent.liveness_thread import LivenessRunner
from hvcluster.agent.migration import MigrationWorker
from hvcluster.agent.node import NodeAgent, NodeIdentity
from hvcluster.agent.resources import HostResources
from hvcluster.agent.revocation import keep_crl
from hvcluster.agent.storage_move import StorageMover
from hvcluster.agent.usage import UsagePublisher
from hvcluster.api.app import create_app
from hvcluster.api.context import PeerApi
from hvcluster.api.serving import server_settings
from hvcluster.clock import SYSTEM, Clock
from hvcluster.controller.loop import Controller
from hvcluster.drivers.base import Driver
from hvcluster.drivers.registry import DriverOptions, make_driver
from hvcluster.host.network import Links
from hvcluster.host.pki import serial_of
from hvcluster.models.config import ClusterConfig
from hvcluster.models.errors import StoreError
from hvcluster.models.event import Say
from hvcluster.models.lifecycle import VMState
from hvcluster.store.base import Store
from hvcluster.store.election import Election
from hvcluster.store.events import EventLog
from hvcluster.store.lease import LeaseKeeper
from hvcluster.store.state import read_config
from hvcluster.tasks import cancel_all, within
from hvcluster.watchdog.node import WatchdogFeeder
from hvcluster.web.app import install_dashboard

log = logging.getLogger("hvc.agent")


class Daemon:
    """One host's daemon. ``store`` and ``driver`` may be given (an in-process simulation
    runs several daemons on one memory store); by default they are built from ``cfg``, and
    only what the daemon built itself does it close."""

    def __init__(
        self,
        cfg: AgentConfig,
        store: Store | None = None,
        driver: Driver | None = None,
        serve_api: bool = True,
        links: Links | None = None,
        watchdog: WatchdogFeeder | None = None,
        clock: Clock = SYSTEM,
        host: HostLiveness | None = None,
    ) -> None:
        """``host``: its liveness, made (and maybe started) before this daemon's modules
        were imported (agent/start.py); else made here from ``store``, ``watchdog``."""
        self.cfg = cfg
        self.clock = clock  # real; a simulation's ManualClock moves every loop of the daemon
        self.host = host if host is not None else HostLiveness(cfg, store, watchdog, clock)
        self.keys = self.host.keys
        self.metrics = self.host.metrics
        self.store: Store = self.host.store
        self.watchdog = self.host.watchdog
        self.driver: Driver = driver if driver is not None else driver_of(cfg)
        self.serve_api = serve_api
        self.links: Links = links if links is not None else self.driver.links()
        self.events = EventLog(self.store, self.keys)
        self.tasks: list[asyncio.Task[None]] = []
        self.agent: NodeAgent | None = None
        self.live: LivenessRunner = self.host.runner
        self.controller: Controller | None = None
        self.resources: HostResources | None = None
        self.usage: UsagePublisher | None = None
        self.migrations: MigrationWorker | None = None
        self.storage: StorageMover | None = None

    @property
    def liveness(self) -> NodeLiveness | None:
        return self.live.liveness

    async def say(self, kind: str, subject: str, reason: str, actor: str = "agent") -> None:
        """Log a decision or action, and record it as a cluster event."""
        await self.host.say_to(self.events, kind, subject, reason, actor)

    async def say_all(self, said: Sequence[tuple[str, str, str]], actor: str = "agent") -> None:
        """Log decisions or actions, and record them as cluster events in few writes."""
        await self.host.say_all_to(self.events, said, actor)

    async def run(self) -> None:
        # Liveness first (if agent/start.py did not start it already): a restarted agent
        # adopts its lease and feeds the watchdog before anything slow (re-attaching,
        # probing the accelerator, checking volumes).
        if not self.host.started:
            await self.host.start()
        live = self.live
        try:
            await self._run(live)
        finally:
            # Each step runs even if the one before is interrupted (a caller that cancels
            # again while we stop, as cancel_all does): a liveness left running would keep
            # renewing the lease of an agent that is gone, and its VMs would never move.
            try:
                await cancel_all(self.tasks)
            finally:
                if self.agent is not None:
                    self.agent.close()  # (its cache's watch: a task of its own)
                try:
                    await live.stop()
                finally:
                    try:
                        await self.driver.close()  # lets go of the VMs; they keep running
                    finally:
                        await self.host.close()

    async def _run(self, live: LivenessRunner) -> None:
        cfg = self.cfg
        config, bad = await read_config(self.store, self.keys)
        if bad is not None:
            log.warning("cluster config unreadable, using defaults: %s", bad)
        driver = self.driver
        attached = await driver.attach()
        if attached:
            log.info("re-attached to %s", ", ".join(f"{v.name} (pid {v.pid})" for v in attached))
        facts = await driver.inventory()

        async def agent_say(kind: str, subject: str, reason: str) -> None:
            await self.say(kind, subject, reason, "agent")

        agent = self.agent = self.host.agent = NodeAgent(
            self.store,
            self.keys,
            NodeIdentity(
                cfg.node,
                cfg.address,
                cfg.api_port,
                dict(cfg.labels),
                cfg.cpus,
                cfg.memory_mib,
                cfg.migration_address,
            ),
            driver,
            config,
            agent_say,
            lease=lambda: live.state().lease_id,
            may_start=lambda: live.state().may_start(self.clock.now(), config.fence_after_s),
            clock=self.clock,
            metrics=self.metrics,
            timings=self._timings,
            revoked_key=await self._revoked_key(),
        )
        self.migrations = MigrationWorker(self.store, self.keys, agent, agent_say)
        storage = self.storage = StorageMover(self.store, self.keys, agent, agent_say)
        checkpoints = CheckpointWorker(self.store, self.keys, agent, agent_say)
        resources = self.resources = self._resources(agent, agent_say)
        usage = self.usage = UsagePublisher(
            self.store, self.keys, cfg.node, driver, self.clock.wall, self.clock.sleep
        )  # CPU use for the balancer, at usage/<node>
        await resources.check()  # the node registers with its switches and volumes
        # The node record says the timings its liveness runs with (_timings): on its own
        # thread, liveness is built once it has read the cluster config, which can still be
        # under way here on a loaded host (register_node then failed its assert).
        while self.liveness is None and not live.ended():
            await self.clock.sleep(0.05)
        await agent.register_node(facts)
        await live.registered()
        if cfg.etcd_crl is not None:
            crl = keep_crl(self.store, self.keys, cfg.etcd_crl)
            self.tasks.append(asyncio.create_task(crl, name="etcd-crl"))
        self.tasks += [
            asyncio.create_task(live.finished(), name="liveness"),
            asyncio.create_task(agent.run(), name="reconcile"),
            asyncio.create_task(agent.watch_changes("placements"), name="watch-placements"),
            asyncio.create_task(agent.watch_changes("vms"), name="watch-vms"),
            asyncio.create_task(agent.watch_driver(), name="watch-driver"),
            asyncio.create_task(resources.run(), name="volumes-and-switches"),
            asyncio.create_task(self.migrations.run(), name="migrations"),
            asyncio.create_task(self.migrations.watch(), name="watch-migrations"),
            asyncio.create_task(storage.run(), name="storage-moves"),
            asyncio.create_task(storage.watch(), name="watch-storage-moves"),
            asyncio.create_task(checkpoints.run(), name="checkpoints"),
            asyncio.create_task(checkpoints.watch(), name="watch-checkpoints"),
            asyncio.create_task(usage.run(), name="cpu-use"),
        ]
        if self.serve_api:
            self.tasks.append(asyncio.create_task(self._serve_api(), name="api"))
        if cfg.controller:
            self.tasks.append(asyncio.create_task(self._control(config), name="controller"))
        await asyncio.wait(self.tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in self.tasks:  # in their order, not a set's (that follows addresses)
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def _revoked_key(self) -> str | None:
        """Where this host's certificate would be listed as revoked (None: plain etcd)."""
        cert = self.cfg.etcd_cert
        if cert is None:
            return None
        serial = await asyncio.to_thread(lambda: serial_of(cert.read_text()))
        return self.keys.revoked_cert(serial)

    def _timings(self) -> tuple[float, float]:
        """The fence_after and lease TTL the node's liveness runs with (what it read at
        start; the TTL of the lease it holds, which an adopted lease keeps from before)."""
        liveness = self.liveness
        assert liveness is not None  # started before the node agent exists
        return liveness.config.fence_after_s, liveness.lease_ttl

    def _resources(self, agent: NodeAgent, say: Say) -> HostResources:
        """The periodic check of this host's volumes and switches, wired to the agent."""
        resources = HostResources(
            self.store, self.keys, self.cfg.node, self.links, self.driver,
            agent.report_resources, say, sleep=self.clock.sleep,
        )  # fmt: skip

        def mounted(mounts: dict[str, Path]) -> None:
            agent.disks.mounts = mounts

        async def delete_disks() -> None:
            listed = await self.driver.list()
            local = [vm.name for vm in listed if vm.state not in (VMState.STOPPED, VMState.FAILED)]
            await agent.disks.carry_out_deletions(local, say)  # a stopped VM uses no file

        resources.on_mounts.append(mounted)
        resources.after_check.append(delete_disks)
        return resources

    async def _control(self, config: ClusterConfig) -> None:
        """Stand for election as controller; run the controller loop while leading."""
        election: Election | None = None

        async def controller_say(kind: str, subject: str, reason: str) -> None:
            await self.say(kind, subject, reason, "controller")

        async def controller_say_all(said: Sequence[tuple[str, str, str]]) -> None:
            await self.say_all(said, "controller")

        controller = self.controller = Controller(
            self.store,
            self.keys,
            self.cfg.node,
            controller_say,
            is_leader=lambda: election is not None and election.is_leader,
            clock=self.clock.wall,
            sleep=self.clock.sleep,
            metrics=self.metrics,
            now=self.clock.now,
            say_all=controller_say_all,
        )
        loop = asyncio.create_task(controller.run(), name="controller-loop")
        self.tasks.append(loop)  # stopped with the others (cancel_all: never left running)
        keeper: LeaseKeeper | None = None
        try:
            while True:
                try:
                    keeper = LeaseKeeper(
                        self.store,
                        config.lease_ttl_s,
                        config.keepalive_interval_s,
                        clock=self.clock.now,
                        sleep=self.clock.sleep,
                    )
                    await keeper.start()
                    election = Election(self.store, keeper, "controller", self.keys)
                    await election.campaign(self.cfg.node)
                    controller.wake.set()
                    await election.lost.wait()
                    log.info("lost controller leadership; standing again")
                except (StoreError, TimeoutError) as e:
                    log.warning("controller election: %s; standing again", e)
                    await self.clock.sleep(config.keepalive_interval_s)
                finally:
                    if keeper is not None:
                        keeper.stop_renewing()  # at once, whatever interrupts the rest
                        with contextlib.suppress(BaseException):
                            await within(keeper.stop(revoke=False), 2.0, self.clock.sleep)
        finally:
            try:  # the controller ends with us, never left running on its own
                await cancel_all([loop])
            finally:
                controller.close()
            if election is not None:
                with contextlib.suppress(BaseException):
                    await within(election.resign(), 2.0, self.clock.sleep)

    async def _serve_api(self) -> None:
        """The API, over https when a certificate is configured."""
        cfg = self.cfg
        peers = PeerApi(cfg.api_cert is not None, str(cfg.api_ca) if cfg.api_ca else None)
        app = create_app(
            self.store,
            self.keys,
            cfg.node,
            peers,
            self.metrics,
            local_console(self.driver),
            self.clock.wall,
            self.agent.cache if self.agent is not None else None,
        )
        install_dashboard(app)  # the web dashboard at / (hvcluster.web), same port and tokens
        server = _ApiServer(
            uvicorn.Config(
                app,
                host=cfg.api_host,
                port=cfg.api_port,
                log_level="warning",
                lifespan="off",
                ssl_certfile=str(cfg.api_cert) if cfg.api_cert else None,
                ssl_keyfile=str(cfg.api_key) if cfg.api_key else None,
                **server_settings(),  # floods and slow clients: see hvcluster.api.serving
            )
        )
        await server.serve()


def driver_of(cfg: AgentConfig) -> Driver:
    """This host's driver, chosen by the config's ``driver`` name from the registry."""
    options = DriverOptions(
        run_dir=cfg.run_dir,
        accelerator=cfg.accel,
        cache_dir=cfg.cache_dir,
        guest_cpu=cfg.guest_cpu,
        sim_seed=cfg.sim_seed,
    )
    return make_driver(cfg.driver, options)


class _ApiServer(uvicorn.Server):
    """uvicorn, minus its signal handlers: the daemon handles SIGTERM/SIGINT itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
