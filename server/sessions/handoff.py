"""A session's credential handed from an API-only replica to the gateway replica its
client connects to, through the store, readable only with the session's ticket.

An API-only replica (``role: api``) starts sessions but serves no gateway, so the
credential it minted must reach whichever gateway replica the client's first
connection lands on.  The store must not let someone with a copy of it use a
database, and it keeps only a hash of each ticket: so the credential is sealed
with keys derived from the ticket itself, which only the client (and, for an
instant, the API replica) ever holds.  A gateway replica presented with the
ticket derives the same keys and opens it.

The cipher uses nothing beyond the standard library (the broker stays free of
``cryptography``): each ticket is 32 random bytes and seals exactly one
message, so a SHAKE-256 keystream keyed by it (and a random nonce) XORed with
the text is a one-time pad, and an HMAC-SHA-256 over nonce and ciphertext,
under a second key from the same ticket, makes any change to it fail to open.
Both keys are HMACs of the ticket under labels of their own, unrelated to the
SHA-256 of the ticket the store keeps to find the session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from typing import Any

_VERSION = "v1."
_NONCE = 16
_TAG = 32


class SealBroken(ValueError):
    """A sealed text that does not open with this ticket (another ticket, or altered)."""


def _keys(ticket: str) -> tuple[bytes, bytes]:
    secret = ticket.encode()
    cipher = hmac.new(secret, b"dbaccess handoff cipher", hashlib.sha256).digest()
    mac = hmac.new(secret, b"dbaccess handoff mac", hashlib.sha256).digest()
    return cipher, mac


def _stream(key: bytes, nonce: bytes, length: int) -> bytes:
    return hashlib.shake_256(key + nonce).digest(length)


def seal(ticket: str, payload: Mapping[str, Any]) -> str:
    """``payload`` (JSON's types) as text only ``ticket`` opens."""
    cipher_key, mac_key = _keys(ticket)
    plain = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    nonce = secrets.token_bytes(_NONCE)
    body = bytes(a ^ b for a, b in zip(plain, _stream(cipher_key, nonce, len(plain)), strict=True))
    tag = hmac.new(mac_key, nonce + body, hashlib.sha256).digest()
    return _VERSION + base64.urlsafe_b64encode(nonce + body + tag).decode("ascii")


def open_sealed(ticket: str, sealed: str) -> dict[str, Any]:
    """The payload :func:`seal` sealed with ``ticket``; :class:`SealBroken` otherwise."""
    if not sealed.startswith(_VERSION):
        raise SealBroken("not a sealed credential this broker knows")
    try:
        raw = base64.urlsafe_b64decode(sealed[len(_VERSION) :].encode("ascii"))
    except ValueError:
        raise SealBroken("the sealed credential is not base64") from None
    if len(raw) < _NONCE + _TAG:
        raise SealBroken("the sealed credential is cut short")
    nonce, body, tag = raw[:_NONCE], raw[_NONCE:-_TAG], raw[-_TAG:]
    cipher_key, mac_key = _keys(ticket)
    if not hmac.compare_digest(tag, hmac.new(mac_key, nonce + body, hashlib.sha256).digest()):
        raise SealBroken("the sealed credential does not open with this ticket")
    plain = bytes(a ^ b for a, b in zip(body, _stream(cipher_key, nonce, len(body)), strict=True))
    payload = json.loads(plain)
    if not isinstance(payload, dict):
        raise SealBroken("the sealed credential holds no mapping")
    return payload
