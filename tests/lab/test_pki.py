"""The lab's small PKI: a CA, certificates naming their addresses, keys only the owner reads."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from hvcluster.lab.pki import Authority, PkiError


def openssl(*args: str) -> str:
    return subprocess.run(
        ["openssl", *args], check=True, capture_output=True, text=True, timeout=30
    ).stdout


def test_certificates_name_their_addresses_and_keys_are_private(tmp_path: Path) -> None:
    pki = Authority(tmp_path / "pki")
    files = pki.issue("n1", ["10.213.0.11", "127.0.0.1", "localhost", "127.0.0.1"])
    assert "OK" in openssl("verify", "-CAfile", str(files.ca), str(files.cert))
    names = openssl("x509", "-in", str(files.cert), "-noout", "-ext", "subjectAltName")
    assert "IP Address:10.213.0.11, IP Address:127.0.0.1, DNS:localhost" in names
    usage = openssl("x509", "-in", str(files.cert), "-noout", "-ext", "extendedKeyUsage")
    assert "Server Authentication" in usage and "Client Authentication" in usage
    for key in (files.key, pki.ca_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.cert.stat().st_mode) == 0o644
    assert not list(pki.dir.glob("*.csr")) and not list(pki.dir.glob("*.ext"))

    again = pki.issue("client")  # the same CA signs the next one
    assert again.ca == files.ca
    assert "OK" in openssl("verify", "-CAfile", str(files.ca), str(again.cert))


def test_a_name_that_cannot_be_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="cannot name"):
        Authority(tmp_path / "pki").issue("../escape")
