"""etcd refuses a membership change as "unhealthy cluster" for a few seconds after a
promotion (its strict reconfiguration check): an add or a removal asks again meanwhile, and
any other refusal, or one that outlasts the wait, is raised at once. A fake connection that
refuses as etcd does (the retry's timing needs no etcd)."""

from __future__ import annotations

from typing import Any

import pytest

from hvcluster.models.errors import StoreError
from hvcluster.store import etcd_members

pytestmark = [pytest.mark.timeout(30), pytest.mark.parallel]


class Refusing:
    """A connection whose first ``times`` calls are refused with ``why``."""

    def __init__(self, times: int, why: str) -> None:
        self.left, self.why, self.calls = times, why, 0

    async def call(self, what: str, call: Any, op: str, mutable: bool) -> str:
        self.calls += 1
        if self.left > 0:
            self.left -= 1
            raise StoreError(f"{what}: etcdserver: {self.why}")
        return "done"


async def test_unhealthy_cluster_is_asked_again_until_it_passes() -> None:
    conn = Refusing(2, "unhealthy cluster")
    assert await etcd_members.while_unhealthy(conn, "member add x", None, 5.0, every=0.01) == "done"  # type: ignore[arg-type]
    assert conn.calls == 3
    other = Refusing(1, "too many learner members in cluster")
    with pytest.raises(StoreError, match="too many learner"):
        await etcd_members.while_unhealthy(other, "member add x", None, 5.0, every=0.01)  # type: ignore[arg-type]
    assert other.calls == 1
    stuck = Refusing(1000, "unhealthy cluster")
    with pytest.raises(StoreError, match="unhealthy cluster"):
        await etcd_members.while_unhealthy(stuck, "member add x", None, 0.05, every=0.01)  # type: ignore[arg-type]
