"""TLS helpers: the dev CA and certificate fingerprints."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from server.tlsutil import ensure_dev_ca, fingerprint


def test_fingerprint_is_the_sha256_of_the_der_form(tmp_path: Path) -> None:
    tls = ensure_dev_ca(tmp_path / "tls")
    assert tls.ca is not None
    for path in (tls.ca, tls.cert):
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        assert fingerprint(path) == cert.fingerprint(hashes.SHA256()).hex(":").upper()
    # Text before the first certificate and a second one after it change nothing.
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(
        "subject=CN = dbaccess dev broker\n" + tls.cert.read_text() + tls.ca.read_text()
    )
    assert fingerprint(bundle) == fingerprint(tls.cert)


def test_fingerprint_refuses_what_is_no_certificate(tmp_path: Path) -> None:
    path = tmp_path / "x.pem"
    path.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="no PEM certificate"):
        fingerprint(path)
    path.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(ssl.SSLError):
        fingerprint(path)
