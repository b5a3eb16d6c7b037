"""SCRAM-SHA-256 password verifiers computed on the broker's side.

PostgreSQL accepts ``CREATE ROLE … PASSWORD 'SCRAM-SHA-256$…'`` and stores such
a string as-is, as the role's verifier. Sending the verifier instead of the
password means the plaintext never reaches the server, its statement log,
``pg_stat_activity`` or ``pg_stat_statements``; the verifier alone does not let
anyone log in (it holds StoredKey = H(ClientKey), not ClientKey).

The computation follows RFC 5802/7677 exactly as PostgreSQL's
``scram_build_secret`` does it::

    SaltedPassword = PBKDF2-HMAC-SHA-256(SASLprep(password), salt, iterations)
    StoredKey      = SHA-256(HMAC(SaltedPassword, "Client Key"))
    ServerKey      = HMAC(SaltedPassword, "Server Key")
    verifier       = "SCRAM-SHA-256$<iterations>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>"

Like PostgreSQL, a password that SASLprep rejects is used as raw UTF-8 bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from scramp.utils import ScramException, saslprep

SALT_BYTES = 16  # what PostgreSQL itself uses (SCRAM_DEFAULT_SALT_LEN)
DEFAULT_ITERATIONS = 4096  # PostgreSQL's default scram_iterations


def _prepare(password: str) -> bytes:
    try:
        prepared = saslprep(password)
    except ScramException:
        return password.encode("utf-8")
    return str(prepared).encode("utf-8")


def scram_sha256_verifier(
    password: str, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
) -> str:
    """The verifier PostgreSQL stores in pg_authid.rolpassword for ``password``."""
    if iterations < 1:
        raise ValueError("iterations must be positive")
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    if not salt:
        raise ValueError("salt must not be empty")
    salted = hashlib.pbkdf2_hmac("sha256", _prepare(password), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
