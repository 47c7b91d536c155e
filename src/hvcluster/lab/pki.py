"""A small PKI for the lab and the tests: one CA, and certificates it signs.

Made with the ``openssl`` command (OpenSSL 3), so the project needs no crypto library of its
own. Keys are P-256 and written 0600; certificates 0644. A server
certificate names every address it is reached by (IP and DNS subject alternative names):
gRPC, Python's ``ssl`` and etcd all check the name the client dialled against them. Every
certificate is good for both ends of a connection (``serverAuth`` and ``clientAuth``), as
etcd peers need: a member is the server of one peer link and the client of another.

On a real cluster use the organisation's own PKI; these files are only what the agent's
``etcd_ca``/``etcd_cert``/``etcd_key`` and ``api_cert``/``api_key`` settings point to.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
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


def _run(args: list[str], cwd: Path) -> None:
    try:
        # umask 077: the key is never readable by others, not even for a moment.
        subprocess.run(
            [OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=30, umask=0o077
        )
    except FileNotFoundError:
        raise PkiError("the openssl command is not installed (package openssl)") from None
    except subprocess.CalledProcessError as e:
        why = e.stderr.decode(errors="replace").strip().splitlines()
        raise PkiError(f"openssl {args[0]} failed: {why[-1] if why else e}") from None
    except subprocess.TimeoutExpired:
        raise PkiError(f"openssl {args[0]} did not finish in 30 s") from None


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
        if not name or "/" in name or name.startswith("."):
            raise PkiError(f"{name!r} cannot name a certificate file")
        self.ensure_ca()
        cert, key, csr = (self.dir / f"{name}{ext}" for ext in (".crt", ".key", ".csr"))
        ext = self.dir / f"{name}.ext"
        lines = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            "extendedKeyUsage=serverAuth,clientAuth",
        ]
        hosts = list(hosts)
        if hosts:
            lines.append(f"subjectAltName={subject_alt_names(hosts)}")
        ext.write_text("\n".join(lines) + "\n")
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
