"""``hvc token`` against a real API server, the first admin token written straight into a
real etcd, and where the CLI finds its endpoint, token and CA."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from hvcluster.api import create_app
from hvcluster.cli.client import ApiError, resolve
from hvcluster.cli.main import app as cli_app
from hvcluster.lab.etcd import EtcdCluster
from hvcluster.store.etcd import EtcdStore
from hvcluster.store.keys import Keys
from tests.cli.conftest import ApiServer
from tests.etcd_fixtures import (  # noqa: F401  (fixtures)
    etcd_session,
    etcd_tls_session,
    store_tls,
)


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def said(result: Result) -> str:
    return " ".join(result.output.split())  # Rich wraps at the (test) terminal's width


def as_token(server: ApiServer, token: str, *args: str, **env: str) -> Result:
    """``hvc --token TOKEN ARGS --api URL``, with a (wrong) HVC_TOKEN the option must beat."""
    argv = ["--token", token, *args, "--api", server.url]
    return CliRunner().invoke(cli_app, argv, env={"HVC_TOKEN": "nobody.wrong", **env})


def test_create_use_list_revoke(hvc: Any, server: ApiServer) -> None:
    out = ok(hvc("token", "create", "alice", "--role", "operator"))
    alice = out.strip().splitlines()[-1]
    assert alice.startswith("alice.") and "shown only now" in " ".join(out.split())

    ok(as_token(server, alice, "vm", "create", "tok-1"))
    events = json.loads(ok(hvc("events", "--limit", "50", "--json")))["events"]
    [created] = [e["event"] for e in events if e["event"]["subject"] == "vm/tok-1"]
    assert created["actor"] == "token:alice@n1"

    refused = as_token(server, alice, "volume", "add", "v1", "/srv/v1")
    assert refused.exit_code == 1 and "needs the admin role" in said(refused)

    listed = json.loads(ok(hvc("token", "list", "--json")))["tokens"]
    assert {t["name"]: t["role"] for t in listed}["alice"] == "operator"
    assert alice.split(".", 1)[1] not in json.dumps(listed)
    assert "alice" in ok(hvc("token", "list"))

    ok(hvc("token", "revoke", "alice"))
    gone = as_token(server, alice, "vm", "list")
    assert gone.exit_code == 1 and "revoked" in said(gone)


def test_expiry_is_given_as_a_duration(hvc: Any) -> None:
    made = json.loads(
        ok(hvc("token", "create", "brief", "--role", "reader", "--expires", "2h", "--json"))
    )
    assert made["expires_at"] == pytest.approx(time.time() + 7200, abs=60)
    bad = hvc("token", "create", "never", "--role", "reader", "--expires", "soon")
    assert bad.exit_code != 0 and "--expires" in said(bad)


def test_no_token_says_how_to_get_one(server: ApiServer, tmp_path: Path) -> None:
    empty = tmp_path / "config.toml"
    empty.write_text("")
    env = {"HVC_TOKEN": "", "HVC_CONFIG": str(empty), "HVC_LAB_DIR": str(tmp_path)}
    result = CliRunner().invoke(cli_app, ["vm", "list", "--api", server.url], env=env)
    assert result.exit_code == 1
    assert "no API token" in said(result) and "Traceback" not in result.output


def test_the_ca_file_is_used(server: ApiServer, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli_app, ["--ca", str(tmp_path / "absent.pem"), "vm", "list", "--api", server.url]
    )
    assert result.exit_code == 2 and "cannot read the CA file" in said(result)  # usage


def test_where_endpoint_token_and_ca_come_from(tmp_path: Path) -> None:
    lab = tmp_path / "lab.json"
    lab.write_text(json.dumps({"api": ["http://lab:1"], "token": "lab.t", "ca": "/lab/ca.pem"}))
    config = tmp_path / "config.toml"
    config.write_text('api = ["http://conf:1", "http://conf:2"]\ntoken = "conf.t"\n')
    env = {"HVC_CONFIG": str(config)}

    found = resolve(env=env, lab=lab)  # the config file (no CA: the lab's is for the lab's URLs)
    assert found.urls == ("http://conf:1", "http://conf:2")
    assert (found.token, found.ca) == ("conf.t", None)
    env |= {"HVC_API": "http://env:1", "HVC_TOKEN": "env.t", "HVC_CA": "/env/ca.pem"}
    found = resolve(env=env, lab=lab)
    assert (found.urls, found.token, found.ca) == (("http://env:1",), "env.t", "/env/ca.pem")
    found = resolve(["http://opt:1"], "opt.t", "/opt/ca.pem", env=env, lab=lab)
    assert (found.urls, found.token, found.ca) == (("http://opt:1",), "opt.t", "/opt/ca.pem")
    # nothing but the lab
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    found = resolve(env={"HVC_CONFIG": str(empty)}, lab=lab)
    assert (found.urls, found.token, found.ca) == (("http://lab:1",), "lab.t", "/lab/ca.pem")
    found = resolve(["http://lab:1/"], env={"HVC_CONFIG": str(empty)}, lab=lab)
    assert (found.token, found.ca) == ("lab.t", "/lab/ca.pem")
    # the lab's admin token is never sent anywhere but to the lab's agents
    found = resolve(["http://elsewhere:1"], env={"HVC_CONFIG": str(empty)}, lab=lab)
    assert (found.token, found.ca) == (None, None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('api = "http://a:1"\npassword = "x"\n', "unknown key(s) password"),
        ("token = 5\n", "token must be a string"),
        ("api = [1]\n", "api must be a URL or a list of URLs"),
        ("token = \n", "not valid TOML"),
    ],
)
def test_a_bad_config_file_is_named(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    with pytest.raises(ApiError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve(env={"HVC_CONFIG": str(config)}, lab=tmp_path / "lab.json")
    with pytest.raises(ApiError, match="does not exist"):
        resolve(env={"HVC_CONFIG": str(tmp_path / "absent.toml")}, lab=tmp_path / "lab.json")


@pytest.mark.etcd
def test_the_first_admin_token_is_written_straight_into_etcd(
    etcd_session: EtcdCluster,  # noqa: F811
) -> None:
    endpoint = etcd_session.endpoints[0]
    cluster = f"boot{int(time.time() * 1000) % 100000}"
    args = ["token", "create", "root", "--role", "admin", "--store-endpoints", endpoint]
    out = ok(CliRunner().invoke(cli_app, [*args, "--cluster", cluster]))
    root = out.strip().splitlines()[-1]
    again = CliRunner().invoke(cli_app, [*args, "--cluster", cluster])
    assert again.exit_code == 4 and "already exists" in said(again)  # conflict

    async def use() -> tuple[int, list[dict[str, Any]], bytes]:
        store = EtcdStore([endpoint])
        try:
            transport = httpx.ASGITransport(app=create_app(store, Keys(cluster), "n1"))
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
                headers = {"Authorization": f"Bearer {root}"}
                r = await api.get("/api/v1/tokens", headers=headers)
                anonymous = await api.get("/api/v1/tokens")
            assert anonymous.status_code == 401
            kv = await store.get(Keys(cluster).token("root"))
            assert kv is not None
            return r.status_code, r.json()["tokens"], kv.value
        finally:
            await store.close()

    status, tokens, stored = asyncio.run(use())
    assert status == 200
    assert [(t["name"], t["role"], t["created_by"]) for t in tokens] == [
        ("root", "admin", "bootstrap")
    ]
    assert root.split(".", 1)[1].encode() not in stored


@pytest.mark.etcd
def test_the_first_admin_token_over_tls_needs_the_client_certificate(
    etcd_tls_session: EtcdCluster,  # noqa: F811
) -> None:
    files = etcd_tls_session.client_tls
    assert files is not None
    endpoint = etcd_tls_session.endpoints[0]
    cluster = f"tls{int(time.time() * 1000) % 100000}"
    args = ["token", "create", "root", "--role", "admin", "--store-endpoints", endpoint]
    args += ["--cluster", cluster, "--ca", str(files.ca)]
    refused = CliRunner().invoke(cli_app, args)
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    tls = ["--cert", str(files.cert), "--key", str(files.key)]
    root = ok(CliRunner().invoke(cli_app, [*args, *tls])).strip().splitlines()[-1]

    async def stored() -> bytes | None:
        store = EtcdStore([endpoint], tls=store_tls(etcd_tls_session))
        try:
            kv = await store.get(Keys(cluster).token("root"))
            return None if kv is None else kv.value
        finally:
            await store.close()

    value = asyncio.run(stored())
    assert value is not None and root.split(".", 1)[1].encode() not in value
