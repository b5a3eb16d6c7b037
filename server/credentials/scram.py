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
import threading
from collections import deque

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


class PasswordStock:
    """Fresh random passwords with their verifiers, made ahead on a thread of their own.

    A verifier costs a few milliseconds of PBKDF2 (4,096 rounds), which would
    otherwise be paid on every session start; ``take`` hands out a ready pair
    (or makes one at once when the stock is empty) and the thread tops the
    stock up to ``size``.  Each pair is handed out once; the passwords are
    random, used for no role yet, and never leave this process's memory.
    """

    def __init__(self, password_bytes: int, size: int = 8) -> None:
        self.password_bytes = password_bytes
        self.size = size
        self._ready: deque[tuple[str, str]] = deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _make(self) -> tuple[str, str]:
        password = secrets.token_urlsafe(self.password_bytes)
        return password, scram_sha256_verifier(password)

    def take(self) -> tuple[str, str]:
        """(password, its SCRAM verifier), never handed out before."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._fill, name="dbaccess-passwords", daemon=True
                )
                self._thread.start()
        try:
            pair = self._ready.popleft()
        except IndexError:
            pair = self._make()
        self._wake.set()
        return pair

    def _fill(self) -> None:
        while True:
            while len(self._ready) < self.size:
                self._ready.append(self._make())
            self._wake.wait()
            self._wake.clear()
