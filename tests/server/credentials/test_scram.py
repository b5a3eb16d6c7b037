"""SCRAM-SHA-256 verifiers: byte-for-byte what PostgreSQL computes for the same salt."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import psycopg
import pytest
from psycopg import sql
from scramp import ScramMechanism

from server.credentials.scram import PasswordStock, scram_sha256_verifier
from server.pgcluster import LocalCluster

VERIFIER = re.compile(
    r"SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)"
)


def test_format_and_defaults() -> None:
    m = VERIFIER.fullmatch(scram_sha256_verifier("pw"))
    assert m is not None
    assert m.group(1) == "4096"
    assert len(base64.b64decode(m.group(2))) == 16
    assert len(base64.b64decode(m.group(3))) == 32
    assert len(base64.b64decode(m.group(4))) == 32


def test_random_salt_each_time_and_deterministic_with_a_given_salt() -> None:
    assert scram_sha256_verifier("pw") != scram_sha256_verifier("pw")
    salt = b"0123456789abcdef"
    assert scram_sha256_verifier("pw", salt) == scram_sha256_verifier("pw", salt)


def test_matches_scramp() -> None:
    salt = b"sixteen byte slt"
    _, stored, server, _ = ScramMechanism("SCRAM-SHA-256").make_auth_info(
        "correct horse", iteration_count=4096, salt=salt
    )
    expected = (
        f"SCRAM-SHA-256$4096:{base64.b64encode(salt).decode()}"
        f"${base64.b64encode(stored).decode()}:{base64.b64encode(server).decode()}"
    )
    assert scram_sha256_verifier("correct horse", salt) == expected


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        scram_sha256_verifier("pw", iterations=0)
    with pytest.raises(ValueError):
        scram_sha256_verifier("pw", salt=b"")


@pytest.mark.parametrize(
    "password",
    [
        "plain-ascii-password",
        "pässwörd with spaces",
        "soft\u00adhyphen",  # SASLprep maps U+00AD to nothing
        "\u2168 roman nine",  # NFKC-normalised by SASLprep
        "bidi \u0627\u0644 mixed",  # rejected by SASLprep: used as raw bytes, as PostgreSQL does
    ],
)
def test_identical_to_what_postgresql_computes(pg_cluster: LocalCluster, password: str) -> None:
    """Let the server hash the password itself, then recompute with its salt and iterations."""
    role = "scram_probe"
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute("SET password_encryption = 'scram-sha-256'")
        # ALTER/CREATE ROLE take no bind parameters: quote the literal client-side.
        conn.execute(
            sql.SQL("CREATE ROLE {} PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        try:
            row = conn.execute(
                "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)
            ).fetchone()
        finally:
            conn.execute(f"DROP ROLE {role}")
    assert row is not None
    server_made = str(row[0])
    m = VERIFIER.fullmatch(server_made)
    assert m is not None
    salt = base64.b64decode(m.group(2))
    assert scram_sha256_verifier(password, salt, int(m.group(1))) == server_made


def test_the_password_stock_hands_out_each_fresh_pair_once() -> None:
    stock = PasswordStock(32, size=3)
    pairs = [stock.take() for _ in range(10)]
    assert len({password for password, _ in pairs}) == 10
    for password, verifier in pairs:
        m = VERIFIER.fullmatch(verifier)
        assert m is not None
        salt = base64.b64decode(m.group(2))
        assert scram_sha256_verifier(password, salt=salt) == verifier


def test_one_round_against_the_rfc_7914_pbkdf2_vector() -> None:
    """PBKDF2-HMAC-SHA-256("passwd", "salt", 1): RFC 7914 section 11 (its first 32 bytes)."""
    salted = bytes.fromhex("55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc")
    stored = hashlib.sha256(hmac.new(salted, b"Client Key", hashlib.sha256).digest()).digest()
    server = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    assert scram_sha256_verifier("passwd", b"salt", 1) == (
        f"SCRAM-SHA-256$1:{b64(b'salt')}${b64(stored)}:{b64(server)}"
    )
