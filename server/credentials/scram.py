"""Session roles' passwords, sent to the target as SCRAM-SHA-256 verifiers.

PostgreSQL accepts ``CREATE ROLE … PASSWORD 'SCRAM-SHA-256$…'`` and stores such
a string as-is, as the role's verifier. Sending the verifier instead of the
password means the plaintext never reaches the server, its statement log,
``pg_stat_activity`` or ``pg_stat_statements``; the verifier alone does not let
anyone log in (it holds StoredKey = H(ClientKey), not ClientKey).  The
computation is :func:`server.scram.scram_sha256_verifier`'s, byte for byte
PostgreSQL's own.

Iterations.  PBKDF2's rounds stretch a password that could be guessed: they make
each guess against a stolen verifier (or a recorded exchange) cost as much as a
login does.  A session role's password is no such password: 32 random bytes
from :mod:`secrets` (256 bits), new for every role, never typed, never reused,
and dead when the session ends.  Guessing it is out of reach at one round as at
4,096 (2**256 guesses either way), so session roles get ``SESSION_ITERATIONS``
= 1: the rounds would buy nothing and cost every session three PBKDF2 runs, the
target's at ``CREATE ROLE`` (PostgreSQL checks that a verifier is not the empty
password's by computing that one: 4-6 ms of the target's CPU on PostgreSQL 15),
the broker's making the verifier, and the gateway's at each login as the role
(the client derives SaltedPassword; the server only hashes the proof).  What a
stolen verifier does allow (posing as the server; with a recorded exchange,
logging in) is the same at any iteration count.  Passwords people choose or
keep (the admin roles of the demo and of the tests) keep ``DEFAULT_ITERATIONS``.

Who logs in with a session role's password: the broker's gateway only
(:class:`server.scram.ScramClient`, which takes any positive count), and libpq
where a test or a benchmark connects directly; RFC 5802 asks only for a
positive count (RFC 7677's "SHOULD be at least 4096" is about passwords people
choose), and PostgreSQL stores and checks the verifier as given.  The password
is never handed to a client: the client presents its session ticket to the
gateway.

No plaintext path is kept for targets that hash passwords otherwise: a verifier
is stored as sent whatever the target's ``password_encryption``; pg_hba's
``md5`` method logs such a role in with SCRAM (PostgreSQL's rule for a SCRAM
verifier), and its ``password`` method (the cleartext, which the gateway sends
only over TLS that verified the target) is checked against the verifier.
"""

from __future__ import annotations

import secrets
import threading
from collections import deque

from server.scram import DEFAULT_ITERATIONS, SALT_BYTES, scram_sha256_verifier

__all__ = [
    "DEFAULT_ITERATIONS",
    "SALT_BYTES",
    "SESSION_ITERATIONS",
    "PasswordStock",
    "scram_sha256_verifier",
]

# For random passwords of 256 bits that no one chooses or types (see above).
SESSION_ITERATIONS = 1


class PasswordStock:
    """Fresh random passwords with their verifiers, made ahead on a thread of their own.

    A verifier of ``iterations`` rounds costs that much PBKDF2 (a few
    milliseconds at 4,096), which would otherwise be paid on every session
    start; ``take`` hands out a ready pair (or makes one at once when the stock
    is empty) and the thread tops the stock up to ``size``.  Each pair is handed
    out once; the passwords are random, used for no role yet, and never leave
    this process's memory.
    """

    def __init__(
        self, password_bytes: int, size: int = 8, iterations: int = DEFAULT_ITERATIONS
    ) -> None:
        self.password_bytes = password_bytes
        self.size = size
        self.iterations = iterations
        self._ready: deque[tuple[str, str]] = deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _make(self) -> tuple[str, str]:
        password = secrets.token_urlsafe(self.password_bytes)
        return password, scram_sha256_verifier(password, iterations=self.iterations)

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
