"""SCRAM-SHA-256 as PostgreSQL speaks it (RFC 5802, RFC 7677), without I/O: the
verifier a role's password is stored as, and the client's side of a login.

The keys, as PostgreSQL's ``scram_build_secret`` and libpq compute them::

    SaltedPassword = PBKDF2-HMAC-SHA-256(SASLprep(password), salt, iterations)
    ClientKey      = HMAC(SaltedPassword, "Client Key")
    StoredKey      = SHA-256(ClientKey)
    ServerKey      = HMAC(SaltedPassword, "Server Key")
    verifier       = "SCRAM-SHA-256$<iterations>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>"

Like PostgreSQL, a password that SASLprep rejects is used as raw UTF-8 bytes.

``ScramClient`` is the gateway's side of its login to a target as a session's
role: ``first()`` (client-first-message), ``final(server_first)``
(client-final-message, with the proof) and ``verify(server_final)`` (the
server's signature, compared in constant time: a target that cannot sign does
not know the role's verifier).  It asks for no channel binding (``n,,``), and
refuses a server nonce that does not extend its own and a mandatory extension.
PostgreSQL ignores the user name in the exchange (it takes the startup
packet's); it is sent escaped (``=3D``, ``=2C``), not SASLprep'ed.  ``verified``
says whether the server's signature checked out: a login that started SCRAM
ends only after that (the gateway refuses an AuthenticationOk before it, as
libpq does).
It takes any positive iteration count up to ``MAX_ITERATIONS``: the passwords the
gateway logs in with are the ones the broker's issuers made, random and never
chosen by a person, which need no key stretching (see
:mod:`server.credentials.scram`); a count a person's password would need is
the target's business.  The upper bound keeps a target from making the gateway
spin.  Every violation is a ``ScramError`` (a ``ValueError``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from scramp.utils import ScramException, saslprep

SALT_BYTES = 16  # what PostgreSQL itself uses (SCRAM_DEFAULT_SALT_LEN)
DEFAULT_ITERATIONS = 4096  # PostgreSQL's default scram_iterations
# A target asking for more rounds than this is refused (10 million: seconds of CPU).
MAX_ITERATIONS = 10_000_000
_NONCE_BYTES = 18  # libpq's SCRAM_RAW_NONCE_LEN
_GS2_HEADER = "n,,"  # no channel binding, no authorisation identity


class ScramError(ValueError):
    """The target's side of a SCRAM exchange is malformed or does not verify."""


def _prepare(password: str) -> bytes:
    try:
        prepared = saslprep(password)
    except ScramException:
        return password.encode("utf-8")
    return str(prepared).encode("utf-8")


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def scram_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes, bytes]:
    """(ClientKey, StoredKey, ServerKey) of ``password`` with ``salt`` and ``iterations``."""
    if iterations < 1:
        raise ValueError("iterations must be positive")
    if not salt:
        raise ValueError("salt must not be empty")
    salted = hashlib.pbkdf2_hmac("sha256", _prepare(password), salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    return client_key, hashlib.sha256(client_key).digest(), _hmac(salted, b"Server Key")


def scram_sha256_verifier(
    password: str, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
) -> str:
    """The verifier PostgreSQL stores in pg_authid.rolpassword for ``password``."""
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    _client_key, stored_key, server_key = scram_keys(password, salt, iterations)
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def _attributes(message: str, names: str) -> list[str]:
    """The values of ``message``'s leading attributes, which must be ``names`` in order."""
    parts = message.split(",")
    if len(parts) < len(names):
        raise ScramError(f"SCRAM message too short: {message!r}")
    values = []
    for name, part in zip(names, parts, strict=False):
        if not part.startswith(name + "="):
            raise ScramError(f"SCRAM message without {name}= where expected: {message!r}")
        values.append(part[2:])
    return values


class ScramClient:
    """One SCRAM-SHA-256 login, client side: first(), final(server_first), verify(server_final)."""

    def __init__(self, password: str, user: str = "", nonce: str | None = None) -> None:
        self._password = password
        self._nonce = nonce if nonce is not None else _b64(secrets.token_bytes(_NONCE_BYTES))
        name = user.replace("=", "=3D").replace(",", "=2C")
        self._first_bare = f"n={name},r={self._nonce}"
        self._server_signature: bytes | None = None
        # True once the server's signature verified: the login may end only then.
        self.verified = False

    def first(self) -> str:
        """The client-first-message."""
        return _GS2_HEADER + self._first_bare

    def final(self, server_first: str) -> str:
        """The client-final-message answering ``server_first``, with the client's proof."""
        if server_first.startswith("m="):
            raise ScramError("the target asks for a SCRAM extension this client does not know")
        nonce, salt_b64, count = _attributes(server_first, "rsi")
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise ScramError("the target's SCRAM nonce does not extend the client's")
        try:
            salt = base64.b64decode(salt_b64, validate=True)
        except binascii.Error:
            raise ScramError("the target's SCRAM salt is not base64") from None
        if not (count.isascii() and count.isdigit()) or count.startswith("0"):
            raise ScramError(f"the target's SCRAM iteration count is not valid: {count!r}")
        iterations = int(count)
        if iterations > MAX_ITERATIONS:
            raise ScramError(f"the target asks for {iterations} SCRAM iterations")
        if not salt:
            raise ScramError("the target's SCRAM salt is empty")
        client_key, stored_key, server_key = scram_keys(self._password, salt, iterations)
        without_proof = f"c={_b64(_GS2_HEADER.encode())},r={nonce}"
        auth_message = f"{self._first_bare},{server_first},{without_proof}".encode()
        signature = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = _hmac(server_key, auth_message)
        return f"{without_proof},p={_b64(proof)}"

    def verify(self, server_final: str) -> None:
        """Check the server-final-message's signature; raises ``ScramError`` if it is wrong."""
        if self._server_signature is None:
            raise ScramError("SCRAM server-final before server-first")
        if server_final.startswith("e="):
            raise ScramError(f"the target refused the SCRAM login: {server_final[2:]}")
        (signature_b64,) = _attributes(server_final, "v")
        try:
            signature = base64.b64decode(signature_b64, validate=True)
        except binascii.Error:
            raise ScramError("the target's SCRAM signature is not base64") from None
        if not hmac.compare_digest(signature, self._server_signature):
            raise ScramError("the target's SCRAM signature does not verify")
        self.verified = True
