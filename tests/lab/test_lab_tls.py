"""The lab runs as a real cluster should: etcd with TLS and client certificates required, the
API over https, keys only their owner reads; a client without a certificate is refused."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner

from hvcluster.cli.store_cmd import app as store_app
from hvcluster.models.errors import StoreError
from hvcluster.store.etcd import EtcdStore
from hvcluster.store.etcd_conn import EtcdTls
from tests.lab.conftest import Lab, make_lab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from make_lab(tmp_path_factory.mktemp("tls-lab"), "sim", nodes=1)


def test_the_api_is_https_checked_against_the_lab_ca(lab: Lab) -> None:
    state = lab.state
    assert state.api and all(url.startswith("https://") for url in state.api)
    assert lab.get("/nodes")["nodes"][0]["name"] == "n1"
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{state.api[0]}/api/v1/healthz", timeout=5)  # the system's CAs only
    plain = state.api[0].replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{plain}/api/v1/healthz", timeout=5)


def test_keys_are_private_and_agents_are_configured_with_them(lab: Lab) -> None:
    pki = Path(lab.state.ca).parent
    keys = sorted(pki.glob("*.key"))
    assert {k.name for k in keys} >= {"ca.key", "client.key", "etcd0.key", "n1.key"}
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    conf = Path(lab.state.node("n1").config).read_text()
    for setting in ("etcd_ca", "etcd_cert", "etcd_key", "api_cert", "api_key", "api_ca"):
        assert f"{setting} = " in conf


async def _get_config(endpoints: list[str], tls: EtcdTls | None) -> bytes:
    store = EtcdStore(endpoints, timeout=2, tls=tls)
    try:
        async with asyncio.timeout(15):  # refused, never hung
            kv = await store.get("/hvc/lab/config")
        assert kv is not None
        return kv.value
    finally:
        await store.close()


def test_etcd_lets_in_only_clients_with_a_lab_certificate(lab: Lab) -> None:
    state = lab.state
    endpoints = list(state.etcd_endpoints)
    assert all(e.startswith("https://") for e in endpoints)
    ca, cert, key = Path(state.ca), Path(state.client_cert), Path(state.client_key)
    assert b'"name":"lab"' in asyncio.run(_get_config(endpoints, EtcdTls(ca, cert, key)))
    with pytest.raises(StoreError, match="client certificate"):
        asyncio.run(_get_config(endpoints, EtcdTls(ca)))
    bare = [e.removeprefix("https://") for e in endpoints]
    with pytest.raises(StoreError, match="expect TLS"):
        asyncio.run(_get_config(bare, None))

    hvc = typer.Typer()
    hvc.add_typer(store_app, name="store")
    files = ["--ca", str(ca), "--cert", str(cert), "--key", str(key)]
    result = CliRunner().invoke(hvc, ["store", "check", "-e", endpoints[0], *files])
    assert result.exit_code == 0, result.output
