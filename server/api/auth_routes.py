"""Authentication endpoints: exchanging identity-provider tokens for broker tokens, and back.

Every API call carries a broker token (``Authorization: Bearer dba_...``), an
``api_tokens`` row stored as a hash.  This module is where such tokens come from
and where they are checked (:func:`authenticate`):

- ``GET /v1/auth/config`` (no token needed) tells the CLI which identity
  provider to log people in with: issuer, client id, scopes.
- ``POST /v1/auth/oidc`` takes the ID token the CLI obtained from that provider
  (authorization code + PKCE, or the device flow) and the nonce it sent;
  a verified token yields a ``user`` broker token for the identity and groups
  its claims name, lasting the configured ``token_ttl``.
- ``POST /v1/auth/workload`` takes a CI job's JWT; its issuer must be one the
  policy's ``workload_identities`` name, and the first entry whose claims match
  makes it that service identity (``workload`` broker token).  No entry: 403.
- ``POST /v1/auth/logout`` revokes the presented token; ``GET /v1/whoami`` says
  whose it is and until when.

An ID or workload token can be exchanged once: its issuer and ``jti`` (or, without
a ``jti``, the whole token) are remembered, hashed, until it expires.  Every
exchange, refused or not, lands in the audit log, without any token in it.
"""

# No "from __future__ import annotations": FastAPI reads the endpoints' annotations at
# runtime, and those refer to names local to register().
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from pydantic import BaseModel, Field

from server.audit import chain
from server.config import DEFAULT_WORKLOAD_TOKEN_TTL, OidcConfig
from server.errors import Forbidden, NotAuthenticated, NotFound
from server.identity.oidc import (
    MAX_TOKEN_BYTES,
    VerifiedToken,
    Verifier,
    load_jwt,
    person_from_claims,
    rejected,
    shown,
    unverified_claims,
)
from server.identity.workload import WorkloadClaims, bind
from server.sessions.service import SessionService
from server.store.db import Store, TokenRecord, hash_secret, utcnow


@dataclass(frozen=True)
class AuthSettings:
    """How the broker authenticates: its identity provider for people, if any, and token lifetimes.

    ``verifier`` is shared by all requests so that the providers' keys are cached;
    None means one that fetches them over HTTP.
    """

    oidc: OidcConfig | None = None
    workload_token_ttl: timedelta = DEFAULT_WORKLOAD_TOKEN_TTL
    verifier: Verifier | None = None


def authenticate(store: Store, authorization: str | None) -> TokenRecord:
    """The live broker token in an ``Authorization`` header, or NotAuthenticated saying why not."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise NotAuthenticated(
            "no broker token", hint="log in with dbaccess login, or set DBACCESS_TOKEN"
        )
    rec = store.find_token(authorization[7:].strip())
    if rec is None:
        raise NotAuthenticated("unknown broker token", hint="log in again with dbaccess login")
    if rec.revoked_at is not None:
        raise NotAuthenticated("this broker token was revoked", hint="log in again")
    if rec.expires_at is not None and rec.expires_at <= utcnow():
        raise NotAuthenticated(
            f"broker token expired at {rec.expires_at:%Y-%m-%d %H:%M} UTC",
            hint="log in again with dbaccess login",
        )
    return rec


class OidcLogin(BaseModel):
    id_token: str = Field(min_length=1, max_length=MAX_TOKEN_BYTES)
    nonce: str | None = Field(default=None, max_length=512)


class WorkloadLogin(BaseModel):
    token: str = Field(min_length=1, max_length=MAX_TOKEN_BYTES)


def _replay_key(verified: VerifiedToken, token: str) -> str:
    if verified.jti is not None:
        return hash_secret(f"{verified.issuer}\n{verified.jti}")
    return hash_secret(token)


def _address(request: Request) -> str | None:
    return request.client.host if request.client else None


def register(app: FastAPI, service: SessionService, settings: AuthSettings | None = None) -> None:
    auth = settings or AuthSettings()
    verifier = auth.verifier or Verifier()
    if auth.oidc is not None or service.policy.workload_identities:
        load_jwt()  # tokens will be checked: import PyJWT now, not at the first login
    store = service.store

    def caller_token(authorization: Annotated[str | None, Header()] = None) -> TokenRecord:
        return authenticate(store, authorization)

    CallerToken = Annotated[TokenRecord, Depends(caller_token)]

    def refused(method: str, request: Request, exc: NotAuthenticated | Forbidden) -> None:
        chain.append(
            store,
            "login.rejected",
            data={"method": method, "reason": exc.message, "address": _address(request)},
        )

    def use_once(verified: VerifiedToken, token: str, kind: str, what: str) -> None:
        # Kept past the expiry by the leeway, during which the token still verifies.
        until = verified.expires_at + timedelta(seconds=verifier.leeway)
        key = _replay_key(verified, token)
        if not store.use_once(key, kind=kind, issuer=verified.issuer, expires_at=until):
            raise rejected(what, "it was exchanged for a broker token already (a replay)")

    def issue(
        identity: str,
        groups: tuple[str, ...],
        kind: str,
        ttl: timedelta,
        login: dict[str, Any],
        request: Request,
        owner: str | None = None,
    ) -> dict[str, Any]:
        token, rec = store.create_token(identity, groups, kind, ttl, owner=owner)
        expires = rec.expires_at.isoformat() if rec.expires_at else None
        chain.append(
            store, "login", identity=identity, data={**login, "address": _address(request)}
        )
        issued: dict[str, Any] = {
            "id": rec.id,
            "kind": kind,
            "groups": list(groups),
            "expires_at": expires,
        }
        if owner:
            issued["owner"] = owner
        chain.append(store, "token.issued", identity=identity, data=issued)
        return {
            "token": token,
            "token_id": rec.id,
            "identity": identity,
            "groups": list(groups),
            "kind": kind,
            "expires_at": expires,
        }

    @app.get("/v1/auth/config")
    def auth_config() -> dict[str, Any]:
        oidc = auth.oidc
        people = None
        if oidc is not None:
            people = {
                "issuer": oidc.issuer,
                "client_id": oidc.client_id,
                "scopes": list(oidc.scopes),
            }
            if oidc.client_secret is not None:
                people["client_secret"] = oidc.client_secret
        return {"oidc": people, "workload": bool(service.policy.workload_identities)}

    @app.post("/v1/auth/oidc")
    def oidc_login(body: OidcLogin, request: Request) -> dict[str, Any]:
        oidc = auth.oidc
        if oidc is None:
            raise NotFound(
                "this broker has no identity provider for people",
                hint="its operator sets one in the oidc section; "
                "meanwhile use dbaccess login --token-stdin",
            )
        what = "ID token"
        try:
            verified = verifier.verify(
                body.id_token,
                issuer=oidc.issuer,
                audience=oidc.allowed_audience,
                nonce=body.nonce,
                what=what,
            )
            identity, groups = person_from_claims(
                verified.claims, oidc.identity_claims, oidc.groups_claim
            )
            use_once(verified, body.id_token, "oidc", what)
        except NotAuthenticated as exc:
            refused("oidc", request, exc)
            raise
        login = {"method": "oidc", "issuer": verified.issuer, "subject": verified.subject}
        return issue(identity, groups, "user", oidc.token_ttl, login, request)

    @app.post("/v1/auth/workload")
    def workload_login(body: WorkloadLogin, request: Request) -> dict[str, Any]:
        entries = service.policy.workload_identities
        what = "workload token"
        try:
            issuer = unverified_claims(body.token, what).get("iss")
            if not isinstance(issuer, str) or issuer not in {e.issuer for e in entries}:
                named = shown(issuer) if isinstance(issuer, str) else "(none)"
                raise rejected(
                    what, f"its issuer {named} is not one the policy's workload_identities trust"
                )
            verified = verifier.verify(body.token, issuer=issuer, audience=None, what=what)
            result = bind(
                entries, WorkloadClaims(verified.issuer, verified.audiences, verified.claims)
            )
            if result.identity is None:
                raise Forbidden(
                    result.reason,
                    hint="the policy's workload_identities decide which jobs may log in",
                )
            use_once(verified, body.token, "workload", what)
        except (NotAuthenticated, Forbidden) as exc:
            refused("workload", request, exc)
            raise
        entry = result.identity
        login = {
            "method": "workload",
            "issuer": verified.issuer,
            "subject": verified.subject,
            "claims": {claim: verified.claims.get(claim) for claim in entry.claims},
        }
        groups = tuple(sorted(entry.groups))
        # A job the policy maps to an agent logs in as one, acting for its person.
        kind = "agent" if entry.agent_for else "workload"
        return issue(
            entry.name, groups, kind, auth.workload_token_ttl, login, request, entry.agent_for
        )

    @app.post("/v1/auth/logout")
    def logout(rec: CallerToken) -> dict[str, Any]:
        store.revoke_token(rec.id)
        chain.append(store, "logout", identity=rec.identity, data={"id": rec.id})
        return {"revoked": rec.id}

    @app.get("/v1/whoami")
    def whoami(rec: CallerToken) -> dict[str, Any]:
        return {
            "identity": rec.identity,
            "groups": sorted(rec.groups),
            "kind": rec.kind,
            "owner": rec.owner,
            "token_id": rec.id,
            "expires_at": rec.expires_at.isoformat() if rec.expires_at else None,
        }
