"""A small PKI: one CA, the certificates it signs, and certificate signing requests.

The lab and the tests make whole certificates here (:class:`Authority`); a real cluster's
``hvc cluster init`` makes its CA the same way, and ``hvc node join`` makes its key and a
request on the joining host (:func:`make_request`: the key never leaves the host) that an
agent signs with the cluster's CA (:func:`sign_request`, docs/architecture.md "Joining").

Made with the ``openssl`` command (OpenSSL 3), so the project needs no crypto library of its
own. Keys are P-256 and written 0600; certificates 0644. A server
certificate names every address it is reached by (IP and DNS subject alternative names):
gRPC, Python's ``ssl`` and etcd all check the name the client dialled against them. Every
certificate is good for both ends of a connection (``serverAuth`` and ``clientAuth``), as
etcd peers need: a member is the server of one peer link and the client of another.

An organisation's own PKI can replace all this: these files are only what the agent's
``etcd_ca``/``etcd_cert``/``etcd_key`` and ``api_cert``/``api_key`` settings point to.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hvcluster.models.errors import HvcError

OPENSSL = "openssl"
CA_DAYS = 3650
CERT_DAYS = 825
_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


class PkiError(HvcError):
    """A certificate or key could not be made."""


@dataclass(frozen=True)
class CertFiles:
    """A certificate, its key, and the CA that signed it (what a TLS peer is configured
    with)."""

    ca: Path
    cert: Path
    key: Path


def etcd_tls_flags(ca: Path | str, cert: Path | str, key: Path | str) -> list[str]:
    """An etcd member's mutual TLS, for clients and peers alike: both must show a
    certificate signed by the cluster CA (``--client-cert-auth``, ``--peer-client-cert-auth``);
    the member serves and dials with its own ``cert``/``key``."""
    return [
        "--client-cert-auth",
        "--peer-client-cert-auth",
        f"--trusted-ca-file={ca}",
        f"--cert-file={cert}",
        f"--key-file={key}",
        f"--peer-trusted-ca-file={ca}",
        f"--peer-cert-file={cert}",
        f"--peer-key-file={key}",
    ]


def _run(args: list[str], cwd: Path) -> str:
    try:
        # umask 077: the key is never readable by others, not even for a moment.
        done = subprocess.run(
            [OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=30, umask=0o077
        )
        return done.stdout.decode(errors="replace")
    except FileNotFoundError:
        raise PkiError("the openssl command is not installed (package openssl)") from None
    except subprocess.CalledProcessError as e:
        why = e.stderr.decode(errors="replace").strip().splitlines()
        raise PkiError(f"openssl {args[0]} failed: {why[-1] if why else e}") from None
    except subprocess.TimeoutExpired:
        raise PkiError(f"openssl {args[0]} did not finish in 30 s") from None


def _extensions(hosts: list[str]) -> str:
    """A leaf certificate's extensions: good for both ends of a connection (etcd peers are
    both), naming ``hosts`` (none: a client certificate only)."""
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        "extendedKeyUsage=serverAuth,clientAuth",
    ]
    if hosts:
        lines.append(f"subjectAltName={subject_alt_names(hosts)}")
    return "\n".join(lines) + "\n"


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith(".") or not _NAME.fullmatch(name):
        raise PkiError(f"{name!r} cannot name a certificate (letters, digits, '.', '_', '-')")


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def subject_alt_names(names: Iterable[str]) -> str:
    """``IP:...``/``DNS:...`` entries for an openssl ``subjectAltName``, in order, once each."""
    entries: list[str] = []
    for name in dict.fromkeys(names):
        try:
            entries.append(f"IP:{ipaddress.ip_address(name)}")
        except ValueError:
            entries.append(f"DNS:{name}")
    return ",".join(entries)


class Authority:
    """A CA in ``directory`` (``ca.crt``, ``ca.key``), made on first use, and the
    certificates it signs there (``<name>.crt``, ``<name>.key``)."""

    def __init__(self, directory: Path, common_name: str = "hvcluster CA") -> None:
        self.dir = directory
        self.common_name = common_name

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    def ensure_ca(self) -> Path:
        """Make the CA unless it exists; return the path of its certificate."""
        if self.ca_cert.exists() and self.ca_key.exists():
            return self.ca_cert
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)  # certificates are public; every key is 0600
        _run(
            [
                "req", "-x509", *_KEY, "-keyout", self.ca_key.name, "-out", self.ca_cert.name,
                "-days", str(CA_DAYS), "-subj", f"/CN={self.common_name}",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            ],
            self.dir,
        )  # fmt: skip
        self.ca_cert.chmod(0o644)
        return self.ca_cert

    def issue(self, name: str, hosts: Iterable[str] = ()) -> CertFiles:
        """A certificate for ``name`` (its common name), valid for the addresses ``hosts``
        (none: a client certificate only), signed by this CA."""
        _check_name(name)
        self.ensure_ca()
        cert, key, csr = (self.dir / f"{name}{ext}" for ext in (".crt", ".key", ".csr"))
        ext = self.dir / f"{name}.ext"
        ext.write_text(_extensions(list(hosts)))
        try:
            request = ["req", "-new", *_KEY, "-keyout", key.name, "-out", csr.name]
            _run([*request, "-subj", f"/CN={name}"], self.dir)
            _run(
                [
                    "x509", "-req", "-in", csr.name, "-CA", self.ca_cert.name,
                    "-CAkey", self.ca_key.name, "-CAcreateserial", "-out", cert.name,
                    "-days", str(CERT_DAYS), "-extfile", ext.name,
                ],
                self.dir,
            )  # fmt: skip
        finally:
            for temp in (csr, ext):
                temp.unlink(missing_ok=True)
        cert.chmod(0o644)
        os.chmod(key, 0o600)
        return CertFiles(self.ca_cert, cert, key)


@dataclass(frozen=True)
class Signed:
    """A certificate an agent signed for a joining host, and its serial (what revocation
    names)."""

    cert_pem: str
    serial: str  # hex, as openssl prints it


def make_request(directory: Path, name: str) -> tuple[Path, str]:
    """A new key ``<directory>/<name>.key`` (0600, never sent anywhere) and a certificate
    signing request for it with common name ``name``, as PEM: what ``hvc node join`` sends."""
    _check_name(name)
    directory.mkdir(parents=True, exist_ok=True)
    key, csr = directory / f"{name}.key", directory / f"{name}.csr"
    try:
        _run(["req", "-new", *_KEY, "-keyout", key.name, "-out", csr.name, "-subj", f"/CN={name}"],
             directory)  # fmt: skip
        os.chmod(key, 0o600)
        return key, csr.read_text()
    finally:
        csr.unlink(missing_ok=True)


def sign_request(
    ca_cert_pem: str, ca_key_pem: str, csr_pem: str, name: str, hosts: Iterable[str] = ()
) -> Signed:
    """Sign ``csr_pem`` with the CA given as PEM, for ``name`` and the addresses ``hosts``.

    Refused unless the request's signature checks (its sender holds the key) and its common
    name is ``name``: a joining host gets a certificate for the name its join token was
    made for, never one it chose. The CA key is written to a private temporary directory
    for openssl and removed with it."""
    _check_name(name)
    with tempfile.TemporaryDirectory(prefix="hvc-sign-") as tmp:
        work = Path(tmp)
        (work / "ca.crt").write_text(ca_cert_pem)
        (work / "ca.key").write_text(ca_key_pem)
        (work / "req.csr").write_text(csr_pem)
        (work / "leaf.ext").write_text(_extensions(list(hosts)))
        try:
            subject = _run(
                ["req", "-in", "req.csr", "-noout", "-verify", "-subject", "-nameopt", "RFC2253"],
                work,
            )
        except PkiError as e:
            raise PkiError(f"csr: not a valid certificate signing request ({e})") from None
        found = re.search(r"subject=(.*)", subject)
        if found is None or found.group(1).strip() != f"CN={name}":
            said = found.group(1).strip() if found else "none"
            raise PkiError(f"csr: its subject must be CN={name}, it is {said}")
        serial = secrets.randbits(63) | 1 << 62  # positive, never zero, 16 hex digits
        _run(
            [
                "x509", "-req", "-in", "req.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-set_serial", str(serial), "-out", "leaf.crt", "-days", str(CERT_DAYS),
                "-extfile", "leaf.ext",
            ],
            work,
        )  # fmt: skip
        return Signed((work / "leaf.crt").read_text(), f"{serial:X}")


def serial_of(cert_pem: str) -> str:
    """A certificate's serial number in hex (as openssl prints it)."""
    with tempfile.TemporaryDirectory(prefix="hvc-serial-") as tmp:
        (Path(tmp) / "c.crt").write_text(cert_pem)
        out = _run(["x509", "-in", "c.crt", "-noout", "-serial"], Path(tmp))
    return out.strip().partition("=")[2]


CRL_DAYS = 3650
_CRL_CONFIG = """[ ca ]
default_ca = hvc
[ hvc ]
database = index.txt
crlnumber = crlnumber
default_md = sha256
default_crl_days = {days}
"""


def make_crl(ca_cert_pem: str, ca_key_pem: str, revoked: Iterable[tuple[str, str]]) -> str:
    """A certificate revocation list (PEM) signed by the CA, naming ``revoked``
    (``(serial hex, node)`` pairs): what etcd's ``--client-crl-file``/``--peer-crl-file``
    read (docs/architecture.md, "What revocation means here")."""
    with tempfile.TemporaryDirectory(prefix="hvc-crl-") as tmp:
        work = Path(tmp)
        (work / "ca.crt").write_text(ca_cert_pem)
        (work / "ca.key").write_text(ca_key_pem)
        (work / "crlnumber").write_text("01\n")
        (work / "ca.cnf").write_text(_CRL_CONFIG.format(days=CRL_DAYS))
        now = time.strftime("%y%m%d%H%M%SZ", time.gmtime())
        lines = []
        for serial, node in revoked:
            if not re.fullmatch(r"[0-9A-Fa-f]{1,40}", serial):
                raise PkiError(f"serial {serial!r} is not hexadecimal")
            _check_name(node)
            even = serial.upper() if len(serial) % 2 == 0 else "0" + serial.upper()
            lines.append(f"R\t491231235959Z\t{now}\t{even}\tunknown\t/CN={node}\n")
        (work / "index.txt").write_text("".join(lines))
        _run(
            ["ca", "-gencrl", "-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.crt",
             "-out", "crl.pem"],
            work,
        )  # fmt: skip
        return (work / "crl.pem").read_text()
