"""Secrets the store must keep usable, sealed with a key the store never holds.

Most secrets never reach the store in a usable form: tickets and API tokens are
kept as SHA-256 hashes, and a handed-off credential (``sessions.handoff``) is
sealed with keys derived from the session's ticket.  What the broker itself must
read back later — a Vault lease id, which a restarted broker or another replica
needs to revoke the lease — is sealed here with AES-256-GCM under a key from the
broker's config (``store_key_file``), so a copy of the store alone opens nothing.
``cryptography`` is imported at the first seal or open only: a broker without
Vault targets never loads it (tests/server/test_broker_imports.py).

The key file holds one key a line, newest first: ``<id> <key>``, the key being
32 random bytes in URL-safe base64 (``dbaccess-server store keygen`` writes one);
blank lines and ``#`` comments are ignored.  The newest key seals; every key in
the file opens.  A sealed text names the key that sealed it and is bound to what
it is (its ``purpose``, e.g. the column), so it cannot be moved to another column:

    sealed:v1:<key id>:<base64url(nonce 12 bytes, ciphertext and GCM tag)>

The store remembers a check value of each key it has sealed with
(``broker_meta``: an HMAC of a fixed label under the key, which says nothing of
the key), so a key file whose key under a known id is another key is refused at
start-up with that id named, rather than at the first revocation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from server.errors import Unavailable

PREFIX = "sealed:v1:"
_NONCE = 12
_KEY_BYTES = 32
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_CHECK_LABEL = b"dbaccess store key check"


class StoreKeyError(Unavailable):
    """A key file that cannot be used, or a sealed secret that does not open: the
    broker cannot do what needs it until its key file is right, as with a Vault it
    cannot reach (a revocation that meets it fails and is retried by the reaper)."""


@dataclass(frozen=True, repr=False)
class StoreKey:
    id: str
    secret: bytes

    def check_value(self) -> str:
        return hmac.new(self.secret, _CHECK_LABEL, hashlib.sha256).hexdigest()


class StoreKeys:
    """The keys of one key file: the first seals, all of them open."""

    def __init__(self, keys: Sequence[StoreKey], source: str = "the store key file") -> None:
        if not keys:
            raise StoreKeyError(f"{source} holds no key", hint=_KEYGEN_HINT)
        ids = [k.id for k in keys]
        if len(set(ids)) != len(ids):
            raise StoreKeyError(f"{source} names a key id twice", hint="give each key its own id")
        self.keys = tuple(keys)
        self.source = source
        self._by_id = {k.id: k for k in keys}

    def __repr__(self) -> str:
        return f"StoreKeys({', '.join(self.ids)} from {self.source})"

    @property
    def newest(self) -> StoreKey:
        return self.keys[0]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(k.id for k in self.keys)

    @classmethod
    def load(cls, path: Path) -> StoreKeys:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise StoreKeyError(f"store key file {path} not found", hint=_KEYGEN_HINT) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreKeyError(f"cannot read store key file {path}: {exc}") from None
        return cls(parse(text, str(path)), str(path))

    def seal(self, purpose: str, text: str) -> str:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        key = self.newest
        nonce = secrets.token_bytes(_NONCE)
        body = AESGCM(key.secret).encrypt(nonce, text.encode(), _aad(purpose, key.id))
        return f"{PREFIX}{key.id}:{base64.urlsafe_b64encode(nonce + body).decode('ascii')}"

    def open(self, purpose: str, sealed: str) -> str:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        key_id, raw = _split(sealed)
        key = self._by_id.get(key_id)
        if key is None:
            raise StoreKeyError(
                f"a secret in the store is sealed with store key {key_id!r}, "
                f"which {self.source} does not hold (it holds {', '.join(self.ids)})",
                hint=f"put key {key_id!r} back in the key file (old keys stay until "
                "'dbaccess-server store rekey' has re-sealed everything)",
            )
        try:
            plain = AESGCM(key.secret).decrypt(raw[:_NONCE], raw[_NONCE:], _aad(purpose, key_id))
        except InvalidTag:
            raise StoreKeyError(
                f"a secret sealed with store key {key_id!r} does not open: the key under "
                f"that id in {self.source} is not the one it was sealed with, or the "
                "stored text was altered"
            ) from None
        return plain.decode()

    def sealed_with_newest(self, sealed: str) -> bool:
        return _split(sealed)[0] == self.newest.id


def key_id_of(sealed: str) -> str:
    """The id of the key that sealed ``sealed`` (StoreKeyError if it is no sealed text)."""
    return _split(sealed)[0]


def parse(text: str, source: str) -> list[StoreKey]:
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not _KEY_ID.fullmatch(parts[0]):
            raise StoreKeyError(
                f"{source}, line {number}: not '<id> <key>'",
                hint="an id of letters, digits, '.', '_' or '-' (at most 32), a space, "
                "and the key: " + _KEYGEN_HINT,
            )
        try:
            secret = base64.urlsafe_b64decode(parts[1].encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            secret = b""
        if len(secret) != _KEY_BYTES:
            raise StoreKeyError(
                f"{source}, line {number}: key {parts[0]!r} is not 32 bytes in base64",
                hint=_KEYGEN_HINT,
            )
        keys.append(StoreKey(parts[0], secret))
    return keys


def new_key_line(key_id: str | None = None) -> str:
    """A fresh ``<id> <key>`` line for a key file."""
    key_id = key_id or f"k{secrets.token_hex(4)}"
    if not _KEY_ID.fullmatch(key_id):
        raise StoreKeyError(f"{key_id!r} is not a key id: letters, digits, '.', '_', '-'")
    return f"{key_id} {base64.urlsafe_b64encode(secrets.token_bytes(_KEY_BYTES)).decode()}"


def create_key_file(path: Path, key_id: str | None = None) -> None:
    """Write a new key file with one key, readable by its owner only; never overwrite."""
    line = new_key_line(key_id)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("# dbaccess store keys, newest first: <id> <key>\n" + line + "\n")


def _aad(purpose: str, key_id: str) -> bytes:
    return f"dbaccess store {purpose} {key_id}".encode()


def _split(sealed: str) -> tuple[str, bytes]:
    if not sealed.startswith(PREFIX):
        raise StoreKeyError("a secret in the store is not sealed text this broker knows")
    key_id, _, body = sealed[len(PREFIX) :].partition(":")
    try:
        raw = base64.urlsafe_b64decode(body.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise StoreKeyError(f"a secret sealed with store key {key_id!r} is not base64") from None
    if len(raw) < _NONCE + 16:
        raise StoreKeyError(f"a secret sealed with store key {key_id!r} is cut short")
    return key_id, raw


_KEYGEN_HINT = "'dbaccess-server store keygen --key-file PATH' writes a new key file"
