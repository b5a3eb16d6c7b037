"""Logging people in to the web inbox at the broker's identity provider.

The authorization code flow with PKCE (S256) and a nonce, the broker acting as
the provider's client (the ``oidc`` settings' ``client_id``, and its
``client_secret`` when the provider demands one).  :meth:`OidcLogin.start` makes
the state, nonce and code verifier, which travel in a short-lived cookie
(HttpOnly, Secure, SameSite=Lax so that it comes back with the provider's
redirect) and the authorization URL.  :meth:`OidcLogin.finish` checks the state
returned against the cookie's, redeems the code at the token endpoint with the
verifier, and verifies the ID token exactly as ``POST /v1/auth/oidc`` does
(signature, issuer, audience, expiry, the nonce), once.

The endpoints come from the provider's discovery document, cached with its keys
by the shared :class:`~server.identity.oidc.Verifier`.
"""

from __future__ import annotations

import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from server.addresses import is_loopback
from server.config import OidcConfig
from server.errors import NotAuthenticated, Unavailable
from server.identity.oidc import VerifiedToken, Verifier, rejected
from server.ui.security import pkce_pair

LOGIN_TTL_SECONDS = 600
_WHAT = "ID token"


@dataclass(frozen=True)
class PendingLogin:
    """What the login cookie carries between the redirect out and the one back."""

    state: str
    nonce: str
    verifier: str
    next: str

    def to_cookie(self) -> str:
        return json.dumps([self.state, self.nonce, self.verifier, self.next], separators=(",", ":"))

    @classmethod
    def from_cookie(cls, text: str | None) -> PendingLogin | None:
        try:
            state, nonce, verifier, next_ = json.loads(text or "")
        except (ValueError, TypeError):
            return None
        if not all(isinstance(v, str) for v in (state, nonce, verifier, next_)):
            return None
        return cls(state, nonce, verifier, next_)


def _endpoint(doc: dict[str, Any], name: str) -> str:
    url = doc.get(name)
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or not parts.hostname:
        raise Unavailable(f"the identity provider names no {name}")
    if parts.scheme != "https" and not (parts.scheme == "http" and is_loopback(parts.hostname)):
        raise Unavailable(f"the identity provider's {name} is neither https nor on loopback")
    return str(url)


class OidcLogin:
    def __init__(self, oidc: OidcConfig, verifier: Verifier) -> None:
        self.oidc = oidc
        self.verifier = verifier

    def start(self, redirect_uri: str, next_path: str) -> tuple[str, PendingLogin]:
        """The provider's authorization URL and what to keep in the login cookie."""
        doc = self.verifier.keys(self.oidc.issuer).discovery()
        code_verifier, challenge = pkce_pair()
        pending = PendingLogin(
            secrets.token_urlsafe(24), secrets.token_urlsafe(24), code_verifier, next_path
        )
        query = {
            "response_type": "code",
            "client_id": self.oidc.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(self.oidc.scopes),
            "state": pending.state,
            "nonce": pending.nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        url = _endpoint(doc, "authorization_endpoint")
        return f"{url}{'&' if '?' in url else '?'}{urlencode(query)}", pending

    def finish(
        self, pending: PendingLogin | None, state: str | None, code: str | None, redirect_uri: str
    ) -> VerifiedToken:
        """The verified ID token for the code the provider sent back; NotAuthenticated if not."""
        import httpx

        if pending is None:
            raise NotAuthenticated(
                "no login in progress in this browser (or it took over 10 minutes)",
                hint="start again from the login page",
            )
        if not state or not hmac.compare_digest(state.encode(), pending.state.encode()):
            raise NotAuthenticated("the login's state does not match", hint="start again")
        if not code:
            raise NotAuthenticated("the identity provider sent no code", hint="start again")
        doc = self.verifier.keys(self.oidc.issuer).discovery()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": self.oidc.client_id,
            "code_verifier": pending.verifier,
        }
        if self.oidc.client_secret is not None:
            form["client_secret"] = self.oidc.client_secret
        try:
            reply = httpx.post(_endpoint(doc, "token_endpoint"), data=form, timeout=10)
        except httpx.HTTPError as exc:
            raise Unavailable(f"the identity provider's token endpoint: {exc}") from None
        try:
            body = reply.json()
        except ValueError:  # not JSON: an error page of some proxy
            body = {}
        token = body.get("id_token") if isinstance(body, dict) else None
        if reply.status_code != 200 or not isinstance(token, str):
            error = body.get("error", f"HTTP {reply.status_code}") if isinstance(body, dict) else ""
            raise rejected("authorization code", f"the identity provider refused it ({error})")
        return self.verifier.verify(
            token,
            issuer=self.oidc.issuer,
            audience=self.oidc.allowed_audience,
            nonce=pending.nonce,
            what=_WHAT,
        )
