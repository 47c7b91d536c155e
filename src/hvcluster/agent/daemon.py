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
import signal
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from hvcluster.agent.config import AgentConfig
from hvcluster.agent.consoles import local_console
from hvcluster.agent.liveness import NodeLiveness
from hvcluster.agent.liveness_thread import LivenessRunner, OnLoop, OwnThread
from hvcluster.agent.migration import MigrationWorker
from hvcluster.agent.node import NodeAgent, NodeIdentity
from hvcluster.agent.resources import HostResources
from hvcluster.agent.revocation import CertificateRevoked, keep_crl, refuse_if_revoked
from hvcluster.agent.storage_move import StorageMover
from hvcluster.api.app import create_app
from hvcluster.api.context import PeerApi
from hvcluster.api.serving import server_settings
from hvcluster.clock import SYSTEM, Clock
from hvcluster.controller.loop import Controller
from hvcluster.drivers.base import Driver
from hvcluster.drivers.registry import DriverOptions, make_driver
from hvcluster.host.network import Links
from hvcluster.metrics import AgentMetrics
from hvcluster.models.config import ClusterConfig
from hvcluster.models.errors import HvcError, StoreError
from hvcluster.models.event import Event, Say
from hvcluster.models.lifecycle import VMState
from hvcluster.models.migration import MigrationKind
from hvcluster.store.base import Store
from hvcluster.store.election import Election
from hvcluster.store.etcd import EtcdStore
from hvcluster.store.etcd_conn import EtcdTls
from hvcluster.store.events import EventLog
from hvcluster.store.keys import Keys
from hvcluster.store.lease import LeaseKeeper
from hvcluster.store.state import read_config
from hvcluster.tasks import cancel_all
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
    ) -> None:
        self.cfg = cfg
        self.clock = clock  # real; a simulation's ManualClock moves every loop of the daemon
        self.keys = Keys(cfg.cluster)
        # What this agent measures of itself (its etcd clients record into it too), served
        # by its API at /metrics.
        self.metrics = AgentMetrics(cfg.node, clock.now, [k.value for k in MigrationKind])
        self._own_store = store is None
        self.store: Store = store if store is not None else etcd_store(cfg, self.metrics)
        self.driver: Driver = driver if driver is not None else driver_of(cfg)
        self.serve_api = serve_api
        self.links: Links = links if links is not None else self.driver.links()
        self.events = EventLog(self.store, self.keys)
        # The node watchdog's feeder (MemoryWatchdog, its twin, in simulations).
        self.watchdog = watchdog if watchdog is not None else WatchdogFeeder(cfg.run_dir)
        self.tasks: list[asyncio.Task[None]] = []
        self.agent: NodeAgent | None = None
        self.live: LivenessRunner | None = None
        self.controller: Controller | None = None
        self.resources: HostResources | None = None
        self.migrations: MigrationWorker | None = None
        self.storage: StorageMover | None = None

    @property
    def liveness(self) -> NodeLiveness | None:
        return self.live.liveness if self.live is not None else None

    async def say(self, kind: str, subject: str, reason: str, actor: str = "agent") -> None:
        """Log a decision or action, and record it as a cluster event."""
        await self._say_to(self.events, kind, subject, reason, actor)

    async def _say_to(
        self, events: EventLog, kind: str, subject: str, reason: str, actor: str
    ) -> None:
        log.info("%s %s: %s", kind, subject, reason)
        event = Event(
            time=self.clock.wall(),
            kind=kind,
            subject=subject,
            reason=reason,
            actor=f"{actor}@{self.cfg.node}",
        )
        try:
            await events.append(event)
        except StoreError as e:
            log.warning("could not record event %s: %s", kind, e)

    def _liveness_runner(self) -> LivenessRunner:
        """Liveness on its own thread with its own etcd client, built from the same config,
        when the daemon made its store; on this loop with the store it was handed (an
        in-process simulation on a memory store: see agent/liveness_thread.py)."""
        if self._own_store:
            return OwnThread(
                lambda: etcd_store(self.cfg, self.metrics), self._build_liveness, "liveness"
            )
        return OnLoop(self.store, self._build_liveness)

    async def _build_liveness(self, store: Store, runner: LivenessRunner) -> NodeLiveness:
        """The node's liveness on ``store``, its events said through ``store`` too; the
        node agent's hooks run on the main loop (the agent may not exist yet: then it runs
        no VM it knows of, and registers the node itself)."""
        node, events = self.cfg.node, EventLog(store, self.keys)
        while True:
            try:
                config, _ = await read_config(store, self.keys)
                break
            except (StoreError, TimeoutError) as e:
                log.warning("liveness cannot read the cluster config: %s; trying again", e)
                await self.clock.sleep(1.0)

        async def say(kind: str, reason: str) -> None:
            await self._say_to(events, kind, f"node/{node}", reason, "agent")

        async def kill_changed(names: set[str]) -> None:
            if self.agent is not None:
                await self.agent.kill_now(names)

        async def node_registered_again() -> None:
            if self.agent is None or self.agent.facts is None:
                return
            try:
                # Evicted while running (eviction deletes the alive key, so liveness
                # registers again): writing the node record would bring the node back.
                await refuse_if_revoked(self.store, self.keys, self.cfg.etcd_cert)
            except CertificateRevoked as e:
                log.error("not registering the node again: %s; stop this agent", e)
                await say("node.revoked", f"{e}; its agent did not register it again")
                return
            await self.agent.register_node()

        return NodeLiveness(
            store,
            self.keys,
            node,
            config,
            self.watchdog,
            local_placements=lambda: self.agent.owned_placements() if self.agent else {},
            kill_changed=runner.on_main(kill_changed),
            say=say,
            on_registered=runner.on_main(node_registered_again, wait=False),
            clock=self.clock.now,
            sleep=self.clock.sleep,
            wall=self.clock.wall,
            metrics=self.metrics,
        )

    async def run(self) -> None:
        cfg = self.cfg
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            await refuse_if_revoked(self.store, self.keys, cfg.etcd_cert)  # evicted: never
        except BaseException:  # register again
            if self._own_store:
                await self.store.close()
            raise
        # Liveness first: a restarted agent adopts its lease and feeds the watchdog before
        # anything slow (re-attaching, probing the accelerator, checking volumes).
        live = self.live = self._liveness_runner()
        await live.start()
        try:
            await self._run(live)
        finally:
            # Each step runs even if the one before is interrupted (a caller that cancels
            # again while we stop, as cancel_all does): a liveness left running would keep
            # renewing the lease of an agent that is gone, and its VMs would never move.
            try:
                await cancel_all(self.tasks)
            finally:
                try:
                    await live.stop()
                finally:
                    try:
                        await self.driver.close()  # lets go of the VMs; they keep running
                    finally:
                        self.watchdog.close()
                        if self._own_store:
                            await self.store.close()

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

        agent = self.agent = NodeAgent(
            self.store,
            self.keys,
            NodeIdentity(
                cfg.node, cfg.address, cfg.api_port, dict(cfg.labels), cfg.cpus, cfg.memory_mib
            ),
            driver,
            config,
            agent_say,
            lease=lambda: live.state().lease_id,
            may_start=lambda: live.state().may_start(self.clock.now(), config.fence_after_s),
            clock=self.clock,
            metrics=self.metrics,
            timings=self._timings,
        )
        self.migrations = MigrationWorker(self.store, self.keys, agent, agent_say)
        storage = self.storage = StorageMover(self.store, self.keys, agent, agent_say)
        resources = self.resources = self._resources(agent, agent_say)
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
        ]
        if self.serve_api:
            self.tasks.append(asyncio.create_task(self._serve_api(), name="api"))
        if cfg.controller:
            self.tasks.append(asyncio.create_task(self._control(config), name="controller"))
        done, _ = await asyncio.wait(self.tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

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

        controller = self.controller = Controller(
            self.store,
            self.keys,
            self.cfg.node,
            controller_say,
            is_leader=lambda: election is not None and election.is_leader,
            clock=self.clock.wall,
            sleep=self.clock.sleep,
            metrics=self.metrics,
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
                            await asyncio.wait_for(keeper.stop(revoke=False), 2.0)
        finally:
            try:  # the controller ends with us, never left running on its own
                await cancel_all([loop])
            finally:
                controller.close()
            if election is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(election.resign(), 2.0)

    async def _serve_api(self) -> None:
        """The API, over https when a certificate is configured."""
        cfg = self.cfg
        peers = PeerApi(cfg.api_cert is not None, str(cfg.api_ca) if cfg.api_ca else None)
        app = create_app(
            self.store, self.keys, cfg.node, peers, self.metrics, local_console(self.driver)
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


def etcd_store(cfg: AgentConfig, metrics: AgentMetrics | None = None) -> EtcdStore:
    """The agent's etcd client (the daemon's, and liveness's own): TLS (with its client
    certificate) when ``etcd_ca`` is set; each request timed into ``metrics``."""
    tls = EtcdTls(cfg.etcd_ca, cfg.etcd_cert, cfg.etcd_key) if cfg.etcd_ca else None
    return EtcdStore(list(cfg.etcd), tls=tls, metrics=metrics)


class _ApiServer(uvicorn.Server):
    """uvicorn, minus its signal handlers: the daemon handles SIGTERM/SIGINT itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def run(cfg: AgentConfig) -> None:
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {cfg.node} %(name)s %(levelname)s %(message)s",
    )
    daemon = Daemon(cfg)

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: task.cancel() if task else None)
        with contextlib.suppress(asyncio.CancelledError):
            await daemon.run()

    try:
        asyncio.run(main())
    except HvcError as e:
        log.error("agent stopped: %s", e)
        raise SystemExit(1) from None
