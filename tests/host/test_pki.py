"""The lab's small PKI: a CA, certificates naming their addresses, keys only the owner reads."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from hvcluster.host.pki import (
    Authority,
    PkiError,
    make_crl,
    make_request,
    serial_of,
    sign_request,
)


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


def test_a_request_is_signed_for_the_name_it_was_made_for_only(tmp_path: Path) -> None:
    pki = Authority(tmp_path / "pki")
    pki.ensure_ca()
    ca_cert, ca_key = pki.ca_cert.read_text(), pki.ca_key.read_text()
    key, csr = make_request(tmp_path / "host", "n4")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in csr
    signed = sign_request(ca_cert, ca_key, csr, "n4", ["10.0.0.4"])
    (tmp_path / "n4.crt").write_text(signed.cert_pem)
    assert "OK" in openssl("verify", "-CAfile", str(pki.ca_cert), str(tmp_path / "n4.crt"))
    assert serial_of(signed.cert_pem) == signed.serial
    names = openssl("x509", "-in", str(tmp_path / "n4.crt"), "-noout", "-ext", "subjectAltName")
    assert "IP Address:10.0.0.4" in names
    # The certificate matches the host's own key.
    modulus = openssl("x509", "-in", str(tmp_path / "n4.crt"), "-noout", "-pubkey")
    assert modulus == openssl("pkey", "-in", str(key), "-pubout")
    with pytest.raises(PkiError, match="subject must be CN=n5, it is CN=n4"):
        sign_request(ca_cert, ca_key, csr, "n5")
    with pytest.raises(PkiError, match="csr: not a valid"):
        sign_request(ca_cert, ca_key, csr.replace("A", "B", 3), "n4")
    with pytest.raises(PkiError, match="cannot name a certificate"):
        make_request(tmp_path, "../x")


def test_a_crl_names_the_revoked_serials_and_openssl_refuses_them(tmp_path: Path) -> None:
    pki = Authority(tmp_path / "pki")
    gone, kept = pki.issue("n4"), pki.issue("n5")
    serial = serial_of(gone.cert.read_text())
    crl = make_crl(pki.ca_cert.read_text(), pki.ca_key.read_text(), [(serial, "n4")])
    (tmp_path / "crl.pem").write_text(crl)
    listed = openssl("crl", "-in", str(tmp_path / "crl.pem"), "-noout", "-text")
    assert f"Serial Number: {serial}" in listed
    check = [
        "verify",
        "-crl_check",
        "-CRLfile",
        str(tmp_path / "crl.pem"),
        "-CAfile",
        str(pki.ca_cert),
    ]
    assert "OK" in openssl(*check, str(kept.cert))
    refused = subprocess.run(
        ["openssl", *check, str(gone.cert)], capture_output=True, text=True, timeout=30, check=False
    )
    assert refused.returncode != 0 and "revoked" in (refused.stdout + refused.stderr)
    with pytest.raises(PkiError, match="not hexadecimal"):
        make_crl(pki.ca_cert.read_text(), pki.ca_key.read_text(), [("xyz", "n4")])
