"""The key layout of a cluster in the store. No key string is built anywhere else.

Everything lives under ``/hvc/<cluster>/``. :class:`Keys` builds keys and parses them back.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = (
    "nodes",
    "alive",
    "vms",
    "placements",
    "status",
    "migrations",
    "volumes",
    "switches",
    "events",
    "election",
    "locks",
    "requests",
    "jobs",
    "tokens",
    "disks",
    "pki",
    "join",
    "usage",
    "checkpoints",
)


@dataclass(frozen=True)
class Keys:
    cluster: str = "hvc"

    @property
    def root(self) -> str:
        return f"/hvc/{self.cluster}/"

    @property
    def config(self) -> str:
        return self.root + "config"

    def prefix(self, kind: str) -> str:
        """``/hvc/<cluster>/<kind>/``: the prefix of every object of that kind."""
        if kind not in KINDS:
            raise ValueError(f"unknown key kind {kind!r}")
        return f"{self.root}{kind}/"

    def node(self, name: str) -> str:
        return self.prefix("nodes") + name

    def alive(self, name: str) -> str:
        return self.prefix("alive") + name

    def vm(self, name: str) -> str:
        return self.prefix("vms") + name

    def placement(self, vm: str) -> str:
        return self.prefix("placements") + vm

    def status(self, vm: str) -> str:
        return self.prefix("status") + vm

    def migration(self, mid: str) -> str:
        return self.prefix("migrations") + mid

    def usage(self, node: str) -> str:
        return self.prefix("usage") + node

    def volume(self, name: str) -> str:
        return self.prefix("volumes") + name

    def switch(self, name: str) -> str:
        return self.prefix("switches") + name

    def event(self, seq: int) -> str:
        # zero-padded so that key order is time order
        return f"{self.prefix('events')}{seq:020d}"

    def election(self, name: str = "controller") -> str:
        return f"{self.prefix('election')}{name}/"

    def lock(self, name: str) -> str:
        return self.prefix("locks") + name

    def job(self, vm: str) -> str:
        """The one job (migration or storage move) under way for ``vm``: see store/jobs.py."""
        return self.prefix("jobs") + vm

    def token(self, name: str) -> str:
        """An API token's record (its secret only hashed): see models/token.py."""
        return self.prefix("tokens") + name

    # Joining and evicting hosts: see models/join.py.
    @property
    def cluster_ca(self) -> str:
        return self.prefix("pki") + "ca"

    def join_token(self, node: str) -> str:
        return self.prefix("join") + node

    def issued_cert(self, node: str) -> str:
        return self.prefix("pki") + "issued/" + node

    def revoked_cert(self, serial: str) -> str:
        return self.prefix("pki") + "revoked/" + serial

    def request(self, name: str) -> str:
        return self.prefix("requests") + name

    def storage_move(self, mid: str = "") -> str:
        """A storage move's record (store/migrations.py); with no id, the prefix of them all."""
        return self.request("storage-moves/" + mid)

    def checkpoint_op(self, oid: str = "") -> str:
        """A checkpoint operation's record (store/checkpoints.py); no id: the prefix."""
        return self.request("checkpoints/" + oid)

    def checkpoints(self, vm: str) -> str:
        """What ``vm``'s disks hold (models/checkpoint.py), written by its agent."""
        return self.prefix("checkpoints") + vm

    def created_disk(self, file: str) -> str:
        """The record that the cluster created disk file ``file`` (``VOLUME:relative/path``):
        only such files are ever deleted by it (see agent/disks.py)."""
        return self.prefix("disks") + file

    def name_of(self, key: str, kind: str) -> str:
        """The object name in ``key`` under ``kind``'s prefix."""
        prefix = self.prefix(kind)
        if not key.startswith(prefix):
            raise ValueError(f"{key!r} is not under {prefix!r}")
        return key[len(prefix) :]
