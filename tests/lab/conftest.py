"""A real lab: etcd and agent processes (with watchdogs) on loopback, stopped after. It runs
with TLS, as every lab does: requests verify the API's certificate against the lab's CA."""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hvcluster.guestimage.image import cached_image
from hvcluster.lab import cluster, faults
from hvcluster.lab.state import LabState, load
from hvcluster.models.config import ClusterConfig
from tests.waiting import wait_for_sync

CACHE = Path("/var/cache/hvcluster")


class Lab:
    def __init__(self, lab_dir: Path) -> None:
        self.dir = lab_dir

    @property
    def state(self) -> LabState:
        return load(self.dir)

    @property
    def ca(self) -> ssl.SSLContext:
        """What ``verify=`` takes: trust the lab's CA."""
        return ssl.create_default_context(cafile=self.state.ca)

    def api(self, avoid: str | None = None) -> str:
        for n in self.state.nodes:
            if n.name != avoid:
                return self.state.api_url(n)
        raise AssertionError("no API left")

    @property
    def headers(self) -> dict[str, str]:
        """The lab's admin token (made by ``hvc lab up``), as every request sends it."""
        return self.state.auth()

    def get_status(self, path: str) -> int:
        """The status of an admin's GET of ``path`` (no raise on 4xx)."""
        url = f"{self.api()}/api/v1{path}"
        return httpx.get(url, timeout=10, headers=self.headers, verify=self.ca).status_code

    def get(self, path: str, avoid: str | None = None) -> Any:
        r = httpx.get(
            f"{self.api(avoid)}/api/v1{path}", timeout=5, headers=self.headers, verify=self.ca
        )
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: Any = None, avoid: str | None = None) -> Any:
        r = httpx.post(
            f"{self.api(avoid)}/api/v1{path}",
            json=body,
            timeout=10,
            headers=self.headers,
            verify=self.ca,
        )
        assert r.status_code < 300, r.text
        return r.json()

    def delete(self, path: str, avoid: str | None = None) -> None:
        r = httpx.delete(
            f"{self.api(avoid)}/api/v1{path}", timeout=10, headers=self.headers, verify=self.ca
        )
        assert r.status_code < 300, r.text

    def vm(self, name: str, avoid: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.get(f"/vms/{name}", avoid)
        return result

    def events(self, avoid: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
        data = self.get(f"/events?limit={limit}", avoid)
        return list(data["events"] if isinstance(data, dict) else data)

    def fault(self, action: str, target: str, ms: int | None = None, source: str = "all") -> str:
        """``hvc lab fault ACTION TARGET``: done, and recorded as a ``lab.fault`` event."""
        return faults.fault(self.state, action, target, ms=ms, source=source)

    def restart(self, node: str) -> None:
        cluster.start_node(self.state, node)


LAB_ERRORS = (httpx.HTTPError, KeyError, OSError)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """:func:`tests.waiting.wait_for_sync`, an agent's transient errors (one restarting, a
    node being cut off) counting as 'not yet'."""
    return wait_for_sync(predicate, timeout, what, every=every, tolerate=LAB_ERRORS)


def config(lab: Lab, avoid: str | None = None) -> ClusterConfig:
    """The cluster's config, as its API says."""
    return ClusterConfig.model_validate(lab.get("/cluster", avoid)["config"])


def controller_cycled(lab: Lab, avoid: str | None = None, timeout: float = 30) -> None:
    """Positive evidence that the controller ran a whole cycle that began after this call:
    a canary VM that fits on no node, created now, is said left failed (then removed). What
    a negative assert ('nothing moved') waits for once the moment it would move has passed."""
    name = f"canary-{uuid.uuid4().hex[:8]}"
    lab.post("/vms", {"name": name, "memory_mib": 4 * 1024 * 1024}, avoid)

    def judged() -> bool:
        return any(
            e["event"]["kind"] == "vm.failed" and e["event"]["subject"] == f"vm/{name}"
            for e in lab.events(avoid)
        )

    try:
        wait_for(judged, timeout, f"the controller to judge the canary {name}")
    finally:
        lab.delete(f"/vms/{name}", avoid)


def make_lab(
    tmp: Path,
    driver: str,
    nodes: int = 3,
    network: cluster.Network = "loopback",
    etcd: int = 1,
    config: ClusterConfig | None = None,
    private_mounts: bool | None = None,
    migration_network: bool = False,
) -> Generator[Lab, None, None]:
    """A lab, stopped after. One etcd member unless asked (``hvc lab up`` runs 3): the tests
    that are not about etcd outages stay light on a loaded machine. ``config``: e.g.
    ``ClusterConfig.with_profile("fast")``; the defaults unless given. ``private_mounts``:
    the lab's default (as root, a mount namespace per node) unless given."""
    lab_dir = tmp / "lab"
    try:
        cluster.up(
            nodes,
            driver,  # type: ignore[arg-type]
            lab_dir,
            CACHE,
            config or ClusterConfig(),
            log=lambda _: None,
            network=network,
            etcd_members=etcd,
            private_mounts=private_mounts,
            migration_network=migration_network,
        )
        yield Lab(lab_dir)
    finally:
        keep = os.environ.get("HVC_KEEP_LAB_LOGS")  # a directory: the logs copied there
        if keep:
            for log_file in lab_dir.glob("**/*.log"):
                dest = Path(keep) / log_file.relative_to(tmp.parent)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):  # (a VM's dir went meanwhile:
                    shutil.copy2(log_file, dest)  # the agents still run)
        cluster.down(lab_dir, log=lambda _: None)


@pytest.fixture(scope="module")
def qemu_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if cached_image(CACHE) is None:
        pytest.fail("the test guest image is not built: run scripts/install (hvc image build)")
    yield from make_lab(tmp_path_factory.mktemp("qemu-lab"), "qemu")
