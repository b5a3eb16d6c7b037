"""A session's credential handed from an API-only replica to the gateway replica its
client connects to, through the store, readable only with the session's ticket.

An API-only replica (``role: api``) starts sessions but serves no gateway, so the
credential it minted must reach whichever gateway replica the client's first
connection lands on.  The store must not let someone with a copy of it use a
database, and it keeps only a hash of each ticket: so the credential is sealed
with keys derived from the ticket itself, which only the client (and, for an
instant, the API replica) ever holds.  A gateway replica presented with the
ticket derives the same keys and opens it.

The cipher is AES-256-GCM (``cryptography``, imported at the first seal or
open: only split replicas hand sessions off), the one the store's own secrets
use (``server.store.sealing``), under a key derived from the ticket: an
HMAC-SHA-256 of the ticket's 32 random bytes under a label of its own,
unrelated to the SHA-256 of the ticket the store keeps to find the session.
A fresh random nonce per seal; the version is bound as associated data, so
any change to the text fails to open.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from typing import Any

_VERSION = "v2."
_AAD = b"dbaccess handoff v2"
_NONCE = 12
_TAG = 16


class SealBroken(ValueError):
    """A sealed text that does not open with this ticket (another ticket, or altered)."""


def _key(ticket: str) -> bytes:
    return hmac.new(ticket.encode(), b"dbaccess handoff aes-256-gcm", hashlib.sha256).digest()


def seal(ticket: str, payload: Mapping[str, Any]) -> str:
    """``payload`` (JSON's types) as text only ``ticket`` opens."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    plain = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    nonce = secrets.token_bytes(_NONCE)
    body = AESGCM(_key(ticket)).encrypt(nonce, plain, _AAD)
    return _VERSION + base64.urlsafe_b64encode(nonce + body).decode("ascii")


def open_sealed(ticket: str, sealed: str) -> dict[str, Any]:
    """The payload :func:`seal` sealed with ``ticket``; :class:`SealBroken` otherwise."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not sealed.startswith(_VERSION):
        raise SealBroken("not a sealed credential this broker knows")
    try:
        raw = base64.urlsafe_b64decode(sealed[len(_VERSION) :].encode("ascii"))
    except ValueError:
        raise SealBroken("the sealed credential is not base64") from None
    if len(raw) < _NONCE + _TAG:
        raise SealBroken("the sealed credential is cut short")
    try:
        plain = AESGCM(_key(ticket)).decrypt(raw[:_NONCE], raw[_NONCE:], _AAD)
    except InvalidTag:
        raise SealBroken("the sealed credential does not open with this ticket") from None
    payload = json.loads(plain)
    if not isinstance(payload, dict):
        raise SealBroken("the sealed credential holds no mapping")
    return payload
