"""A host's liveness, started before the rest of its agent is even imported.

An agent killed and restarted must feed its watchdog again before the deadline its
predecessor left (the last confirmed keepalive + ``fence_after``, 3 s by default) or every VM
of the host is killed. What a restarted agent spends before its first feed is mostly Python
importing modules: measured in the lab on the 2-core test machine, the CLI and the daemon's
modules (API, dashboard, uvicorn, controller, drivers) took 3-7 s of wall time at load 6-12,
longer than ``fence_after``, before liveness even began. So the agent's start
(:mod:`hvcluster.agent.start`) imports only this module and what liveness needs (the etcd
client, the models it reads), checks its certificate is not revoked, starts liveness on its
own thread (:mod:`hvcluster.agent.liveness_thread`), and only then imports the daemon, while
liveness adopts the lease and feeds.

:class:`HostLiveness` is that part of the daemon: the agent's metrics, its etcd store, its
watchdog feeder and its liveness runner. The daemon takes it over
(:class:`hvcluster.agent.daemon.Daemon`); until the daemon made its node agent, liveness runs
no VM it knows of (``agent`` None), as before.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

from hvcluster.agent.config import AgentConfig
from hvcluster.agent.liveness import NodeLiveness
from hvcluster.agent.liveness_thread import LivenessRunner, OnLoop, OwnThread
from hvcluster.agent.revocation import CertificateRevoked, refuse_if_revoked
from hvcluster.clock import SYSTEM, Clock
from hvcluster.metrics import AgentMetrics
from hvcluster.models.errors import StoreError
from hvcluster.models.event import Event
from hvcluster.models.migration import MigrationKind
from hvcluster.store.base import Store
from hvcluster.store.etcd import EtcdStore
from hvcluster.store.etcd_conn import EtcdTls
from hvcluster.store.events import EventLog
from hvcluster.store.keys import Keys
from hvcluster.store.state import read_config
from hvcluster.watchdog.node import WatchdogFeeder

log = logging.getLogger("hvc.agent")


class LocalVms(Protocol):
    """What liveness asks of the node agent once it exists (agent/node.py)."""

    @property
    def facts(self) -> object | None: ...

    def owned_placements(self) -> Mapping[str, int]: ...

    async def kill_now(self, names: set[str]) -> None: ...

    async def register_node(self) -> object: ...


def etcd_store(cfg: AgentConfig, metrics: AgentMetrics | None = None) -> EtcdStore:
    """The agent's etcd client (the daemon's, and liveness's own): TLS (with its client
    certificate) when ``etcd_ca`` is set; each request timed into ``metrics``."""
    tls = EtcdTls(cfg.etcd_ca, cfg.etcd_cert, cfg.etcd_key) if cfg.etcd_ca else None
    return EtcdStore(list(cfg.etcd), tls=tls, metrics=metrics)


class HostLiveness:
    """The agent's store, metrics, watchdog feeder and liveness runner. ``store`` may be
    given (an in-process simulation on a memory store: liveness then runs on the caller's
    loop, see agent/liveness_thread.py); by default it is an etcd client made from ``cfg``
    and liveness runs on its own thread with a client of its own."""

    def __init__(
        self,
        cfg: AgentConfig,
        store: Store | None = None,
        watchdog: WatchdogFeeder | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.keys = Keys(cfg.cluster)
        # What this agent measures of itself (its etcd clients record into it too), served
        # by its API at /metrics.
        self.metrics = AgentMetrics(cfg.node, clock.now, [k.value for k in MigrationKind])
        self.own_store = store is None
        self.store: Store = store if store is not None else etcd_store(cfg, self.metrics)
        self.watchdog = watchdog if watchdog is not None else WatchdogFeeder(cfg.run_dir)
        self.agent: LocalVms | None = None  # the daemon's node agent, once it made it
        self.runner: LivenessRunner = (
            OwnThread(lambda: etcd_store(cfg, self.metrics), self._build, "liveness")
            if self.own_store
            else OnLoop(self.store, self._build)
        )
        self.started = False

    async def start(self) -> None:
        """Refuse a revoked certificate (an evicted host must not register again), then
        start liveness: registration (or adopting the lease) and keepalives go on in the
        background. On failure the store this made is closed."""
        self.cfg.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            await refuse_if_revoked(self.store, self.keys, self.cfg.etcd_cert)
            await self.runner.start()
        except BaseException:
            await self.close()
            raise
        self.started = True

    async def close(self) -> None:
        """Let go of the watchdog feeder and of the store this made (liveness is stopped
        by whoever runs it: the daemon)."""
        try:
            self.watchdog.close()
        finally:
            if self.own_store:
                await self.store.close()

    async def say_to(
        self, events: EventLog, kind: str, subject: str, reason: str, actor: str
    ) -> None:
        """Log a decision or action, and record it as a cluster event."""
        await self.say_all_to(events, [(kind, subject, reason)], actor)

    async def say_all_to(
        self, events: EventLog, said: Sequence[tuple[str, str, str]], actor: str
    ) -> None:
        """Log decisions or actions, and record them as cluster events, in order, in as
        few writes as the store takes (:meth:`EventLog.append_all`)."""
        for kind, subject, reason in said:
            log.info("%s %s: %s", kind, subject, reason)
        now, by = self.clock.wall(), f"{actor}@{self.cfg.node}"
        made = [Event(time=now, kind=k, subject=s, reason=r, actor=by) for k, s, r in said]
        try:
            await events.append_all(made)
        except StoreError as e:
            log.warning("could not record events %s: %s", ", ".join(k for k, _, _ in said), e)

    async def _build(self, store: Store, runner: LivenessRunner) -> NodeLiveness:
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
            await self.say_to(events, kind, f"node/{node}", reason, "agent")

        async def kill_changed(names: set[str]) -> None:
            if self.agent is not None:
                await self.agent.kill_now(names)

        async def node_registered_again() -> None:
            if self.agent is None or self.agent.facts is None:
                return
            try:
                # Evicted while running (eviction deletes the alive key, so liveness
                # registers again): writing the node record would bring the node back. (An
                # eviction right after this check fails the record's write: it is created
                # only while the certificate is not revoked, see NodeAgent.revoked_key.)
                await refuse_if_revoked(self.store, self.keys, self.cfg.etcd_cert)
                await self.agent.register_node()
            except CertificateRevoked as e:
                log.error("not registering the node again: %s; stop this agent", e)
                await say("node.revoked", f"{e}; its agent did not register it again")

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
