"""The joining host's side of ``hvc node join`` (the lab's new nodes use it too).

1. The CA: ``GET /cluster/ca`` without trusting the server yet, kept only if its SHA-256 is
   the fingerprint the join token carries; from then on every request is verified by it.
2. A key and a certificate signing request made here (the key never leaves the host),
   sent with the token to ``POST /join``; the certificate is written next to the key.
3. When the host is to be an etcd member, the cluster added it as a learner: the caller
   starts etcd with :func:`etcd_flags`, then :func:`promote` follows it until it votes
   (the cluster's controller promotes it once it has caught up; asking promotes it as
   soon as it can) or the cluster says it is to stay a learner, and why.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from hvcluster.host.pki import etcd_tls_flags, make_request
from hvcluster.models.errors import Conflict, HvcError, InvalidInput
from hvcluster.models.join import ca_fingerprint, split_join

PREFIX = "/api/v1"
TIMEOUT_S = 30.0  # signing runs openssl on the agent
RETRY_S, MAX_RETRY_S = 0.25, 5.0  # asking whether the learner votes yet


class JoinError(HvcError):
    """The host could not join (the message says which step and why)."""


@dataclass(frozen=True)
class EtcdMember:
    member_id: int
    name: str
    initial_cluster: str


@dataclass(frozen=True)
class Joined:
    node: str
    cluster: str
    ca: Path
    cert: Path
    key: Path
    crl: Path  # its etcd's CRL, kept up to date by its agent (agent.toml etcd_crl)
    serial: str
    etcd_endpoints: tuple[str, ...]
    etcd: EtcdMember | None


def fetch_ca(url: str, fingerprint: str) -> str:
    """The cluster's CA certificate, checked against the join token's ``fingerprint``."""
    try:
        got = httpx.get(f"{url}{PREFIX}/cluster/ca", verify=False, timeout=TIMEOUT_S)
    except httpx.HTTPError as e:
        raise JoinError(f"cannot reach {url} for the cluster CA: {e}") from None
    if got.status_code != 200:
        raise JoinError(f"{url} answered {got.status_code} for the cluster CA: {_said(got)}")
    pem = str(got.json().get("cert_pem", ""))
    if ca_fingerprint(pem) != fingerprint:
        raise JoinError(
            f"the CA {url} sent does not match the join token's fingerprint: not this "
            "cluster, or someone in between; nothing was sent to it"
        )
    return pem


def join(url: str, token: str, address: str, directory: Path, peer_url: str = "") -> Joined:
    """Join the cluster at ``url`` (an agent's API) with a join token; the files written in
    ``directory``: ``ca.crt``, ``<node>.key`` (0600) and ``<node>.crt``."""
    try:
        node, _, fingerprint = split_join(token)
    except ValueError as e:
        raise InvalidInput(str(e), field="token") from None
    url = url.rstrip("/")
    ca_pem = fetch_ca(url, fingerprint)
    directory.mkdir(parents=True, exist_ok=True)
    ca = directory / "ca.crt"
    ca.write_text(ca_pem)
    key, csr = make_request(directory, node)
    body = {"token": token, "csr": csr, "address": address, "peer_url": peer_url}
    answer = _post(url, ca, "/join", body)
    cert = directory / f"{node}.crt"
    cert.write_text(answer["cert_pem"])
    os.chmod(cert, 0o644)
    crl = directory / "crl.pem"
    crl.write_text(answer["crl_pem"])
    etcd = answer.get("etcd")
    return Joined(
        node=node,
        cluster=answer["cluster"],
        ca=ca,
        cert=cert,
        key=key,
        crl=crl,
        serial=answer["serial"],
        etcd_endpoints=tuple(answer["etcd_endpoints"]),
        etcd=EtcdMember(etcd["member_id"], etcd["name"], etcd["initial_cluster"]) if etcd else None,
    )


@dataclass(frozen=True)
class Promotion:
    voting: bool  # false: it stays a learner for now (reason says why)
    reason: str
    waited_s: float


def promote(
    url: str,
    ca: Path,
    token: str,
    timeout: float = 60.0,
    progress: Callable[[str], None] | None = None,
) -> Promotion:
    """Follow this host's etcd learner until it votes or the cluster says it stays a
    learner; ``progress`` hears each new reason it is not promoted yet (etcd refuses a
    learner that has not started or caught up: asked again, backing off up to 5 s). Raises
    :class:`JoinError` after ``timeout`` seconds of refusals."""
    start = time.monotonic()
    delay, said = RETRY_S, ""
    while True:
        try:
            got = _post(url.rstrip("/"), ca, "/join/promote", {"token": token})
            return Promotion(bool(got["voting"]), str(got["reason"]), time.monotonic() - start)
        except Conflict as e:
            waited = time.monotonic() - start
            if waited > timeout:
                raise JoinError(
                    f"etcd member not promoted after {timeout:.0f}s: {e} (the cluster's "
                    "controller keeps trying: 'hvc events' says when)"
                ) from None
            if progress is not None and str(e) != said:
                progress(f"{waited:.0f}s: {e}")
            said = str(e)
            time.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_S)


def etcd_flags(joined: Joined, data_dir: Path, client_url: str, peer_url: str) -> list[str]:
    """etcd's flags for this host's new member (TLS with the joined certificate, client
    certificates required, joining the existing cluster)."""
    if joined.etcd is None:
        raise JoinError(f"node {joined.node} is not to run an etcd member")
    tls = (joined.ca, joined.cert, joined.key)
    return [
        f"--name={joined.node}",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster={joined.etcd.initial_cluster}",
        "--initial-cluster-state=existing",
        *etcd_tls_flags(*tls),
    ]


def _post(url: str, ca: Path, path: str, body: dict[str, Any]) -> dict[str, Any]:
    verify = ssl.create_default_context(cafile=str(ca))
    try:
        got = httpx.post(f"{url}{PREFIX}{path}", json=body, verify=verify, timeout=TIMEOUT_S)
    except httpx.HTTPError as e:
        raise JoinError(f"cannot reach {url} ({path}): {e}") from None
    if got.status_code == 409:
        raise Conflict(_said(got))
    if got.status_code == 422:
        raise InvalidInput(_said(got), field=got.json().get("field"))
    if got.status_code != 200:
        raise JoinError(f"{url} refused {path} ({got.status_code}): {_said(got)}")
    answer: dict[str, Any] = got.json()
    return answer


def _said(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error") or response.text)
    except ValueError:
        return response.text[:200]
