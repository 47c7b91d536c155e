"""schemathesis against the API's own OpenAPI, served as an agent serves it (uvicorn with the
agent's settings, over a MemoryStore holding nodes, VMs, a volume, a switch and a
migration): no request it can make gets a 5xx.

Two passes:

* as an admin (:func:`admin_headers`: the ``Authorization`` header of the admin token
  seeded with everything else): every answer is below 500;
* without any token: additionally, no request changes the store (its revision is the same
  after each call).

Each operation of the OpenAPI is a test, in two modes: examples that fit its schema and
examples that do not (schemathesis' strategies under hypothesis' ``given``; its own pytest
plugin, ``from_fixture``, fails under pytest 9). Path parameters are mostly the names of
seeded objects, so requests reach past the 404. ``GET /events/follow`` is left out: it
streams until the client goes away. Examples are few per operation (:data:`EXAMPLES`, or
``HVC_FUZZ_EXAMPLES``) so that both passes take about a minute; 300 each found nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from hvcluster.api import create_app
from hvcluster.api.serving import server_settings
from hvcluster.models.base import encode
from hvcluster.models.lifecycle import MigrationState, VMState
from hvcluster.models.migration import Migration
from hvcluster.models.node import Capacity, Node, NodeAlive
from hvcluster.models.storage import Switch, Volume
from hvcluster.models.token import Role, Token, issue
from hvcluster.models.vm import Disk, Nic, Placement, VMSpec, VMStatus
from hvcluster.store.memory_store import MemoryStore
from hvcluster.store.tokens import add_token
from tests.api.conftest import KEYS
from tests.waiting import wait_for_sync

pytestmark = pytest.mark.timeout(300)

EXAMPLES = int(os.environ.get("HVC_FUZZ_EXAMPLES", "40"))  # per operation, mode and pass
T = TypeVar("T")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # leave the test runner's signals alone
        yield


class ServedApi:
    """The API over a seeded MemoryStore, served by uvicorn with the agent's settings, in a
    thread of its own (schemathesis' calls block); the store is only touched from there."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.store = MemoryStore()
        # The admin token, stored again at every reseed (hashed, as the API keeps it).
        self.token, self.bearer = issue("fuzz-admin", Role.ADMIN, time.time())
        self.loop = asyncio.new_event_loop()
        self.server: _Server | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, name="api", daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.run(seed(self.store, self.port, self.token))
        config = uvicorn.Config(
            create_app(self.store, KEYS, "n1"),
            host="127.0.0.1",
            port=self.port,
            log_level="error",
            lifespan="off",
            **server_settings(),
        )
        server = self.server = _Server(config)
        self.task = asyncio.run_coroutine_threadsafe(server.serve(), self.loop)
        task = self.task

        def started() -> bool:
            assert not task.done(), task
            return bool(server.started)

        wait_for_sync(started, 10, "the API to start", every=0.01)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def revision(self) -> int:
        return self.run(self.store.revision())

    def reseed(self) -> None:
        """Back to the seeded objects (a fuzzed request may have deleted or changed them)."""

        async def again() -> None:
            await self.store.delete(KEYS.root, prefix=True)
            await seed(self.store, self.port, self.token)

        self.run(again())

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            with contextlib.suppress(Exception):
                self.task.result(timeout=10)
        with contextlib.suppress(Exception):
            self.run(self.store.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


async def seed(store: MemoryStore, port: int, token: Token) -> None:
    """Two alive nodes (n1 is the one serving, on ``port``) and a dead one; a running VM on
    n1 with a disk on a volume and a NIC on a switch, a stopped VM, a finished migration;
    the admin ``token``."""
    await add_token(store, KEYS, token)
    for name, alive in (("n1", True), ("n2", True), ("n3", False)):
        node = Node(
            name=name,
            address="127.0.0.1",
            api_port=port if name == "n1" else 9,  # port 9: nobody answers there
            capacity=Capacity(cpus=8, memory_mib=8192),
            switches=("lan",),
            volumes=("csv1",),
        )
        await store.put(KEYS.node(name), encode(node))
        if alive:
            lease = await store.grant(3600)
            beat = NodeAlive(node=name, lease=lease.id, since=time.time())
            await store.put(KEYS.alive(name), encode(beat), lease=lease.id)
    await store.put(KEYS.volume("csv1"), encode(Volume(name="csv1", path="/srv/csv1", id="a" * 32)))
    await store.put(KEYS.switch("lan"), encode(Switch(name="lan")))
    web = VMSpec(
        name="web-1",
        disks=(Disk(path="web-1/root.qcow2", volume="csv1", size_gib=1),),
        nics=(Nic(switch="lan", mac="52:54:00:00:00:01"),),
    )
    await store.put(KEYS.vm("web-1"), encode(web))
    await store.put(KEYS.placement("web-1"), encode(Placement(node="n1", epoch=1)))
    status = VMStatus(vm="web-1", node="n1", epoch=1, state=VMState.RUNNING, pid=4242)
    await store.put(KEYS.status("web-1"), encode(status))
    await store.put(KEYS.vm("db-1"), encode(VMSpec(name="db-1", desired_state="stopped")))
    done = Migration(id="m1", vm="web-1", source="n2", target="n1", state=MigrationState.DONE)
    await store.put(KEYS.migration("m1"), encode(done))


@pytest.fixture(scope="module")
def agent_api() -> Iterator[ServedApi]:
    served = ServedApi()
    try:
        served.start()
        yield served
    finally:
        served.stop()


@pytest.fixture
def seeded_api(agent_api: ServedApi) -> ServedApi:
    """The served API, its store holding just the seeded objects."""
    agent_api.reseed()
    return agent_api


@pytest.fixture(scope="module")
def admin_headers(agent_api: ServedApi) -> dict[str, str]:
    """What every request of the admin pass carries: the seeded admin token."""
    return {"Authorization": f"Bearer {agent_api.bearer}"}


def _operations() -> dict[str, Any]:
    """The API's operations, from its OpenAPI (built in-process: no server is needed to
    list them), by label (``POST /api/v1/vms``)."""
    openapi = create_app(MemoryStore(), KEYS, "n1").openapi()
    schema = schemathesis.openapi.from_dict(openapi).exclude(path_regex=r"/events/follow$")
    operations = (result.ok() for result in schema.get_all_operations())
    return {op.label: op for op in operations}


OPERATIONS = _operations()
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)  # fitting the schema, and not

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same examples every run: a failure is reproducible
    phases=(Phase.explicit, Phase.generate),  # shrinking an example costs minutes
    database=None,
)


# Path parameters are mostly the names of seeded objects (else nearly every request would
# only meet a 404), and sometimes anything the schema allows.
SEEDED = {"name": ("web-1", "db-1", "n1", "n2", "n3", "csv1", "lan"), "mid": ("m1",)}


def cases(label: str, mode: GenerationMode) -> st.SearchStrategy[Any]:
    operation = OPERATIONS[label]
    anything = operation.as_strategy(mode)
    params = [p for p in SEEDED if "{" + p + "}" in operation.path]
    if not params:
        return anything
    seeded = st.fixed_dictionaries({p: st.sampled_from(SEEDED[p]) for p in params}).flatmap(
        lambda values: operation.as_strategy(mode, path_parameters=values)
    )
    return st.one_of(seeded, seeded, seeded, anything)


def _say(case: Any, response: Any, headers: dict[str, str]) -> str:
    return (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
        f"\nreproduce: {case.as_curl_command(headers=headers)}"
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_no_request_gets_a_server_error(
    label: str, mode: GenerationMode, seeded_api: ServedApi, admin_headers: dict[str, str]
) -> None:
    @FUZZ
    @given(case=cases(label, mode))
    def call(case: Any) -> None:
        response = case.call(base_url=seeded_api.url, headers=admin_headers, timeout=30)
        assert response.status_code < 500, _say(case, response, admin_headers)

    _run(call, label, mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_requests_without_a_token_change_nothing(
    label: str, mode: GenerationMode, seeded_api: ServedApi
) -> None:
    @FUZZ
    @given(case=cases(label, mode))
    def call(case: Any) -> None:
        before = seeded_api.revision()
        response = case.call(base_url=seeded_api.url, timeout=30)
        assert response.status_code < 500, _say(case, response, {})
        assert seeded_api.revision() == before, "without a token it changed the store: " + _say(
            case, response, {}
        )

    _run(call, label, mode)


def _run(call: Callable[[], None], label: str, mode: GenerationMode) -> None:
    try:
        call()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        pytest.skip(f"nothing of {label} can be made not to fit its schema")
