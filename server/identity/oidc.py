"""Verifying OIDC ID tokens and workload JWTs against the keys their issuer publishes.

A token is checked in three steps, each refusing with a message that says what
was wrong (never the token itself):

1. **Header** (:func:`check_header`, pure): only RS256 and ES256.  ``none`` and the
   shared-secret ``HS*`` algorithms are refused before any key is looked at; that
   is what defeats key confusion, where an attacker "signs" with HMAC using the
   issuer's *public* key as the secret.  ``crit`` extensions are refused.
2. **Signature**: the key comes from the issuer's JWKS (found through
   ``/.well-known/openid-configuration``), chosen by ``kid`` and by type (an RSA
   key for RS256, a P-256 key for ES256), and PyJWT checks the signature with
   exactly the algorithm the header named and the key allows.
3. **Claims** (:func:`check_claims`, pure): ``iss`` equal to the expected issuer,
   the expected audience among ``aud``, ``exp`` ahead and ``nbf``/``iat`` not
   ahead (each within ``leeway`` for clock skew), ``sub`` present, and ``nonce``
   equal to the one the login flow sent when it sent one.

:class:`IssuerKeys` caches one issuer's discovery document and key set for
``cache_ttl``.  A ``kid`` the cache does not know makes it fetch the key set again
at once (a provider that rotated its key is picked up on the first token signed
with the new one) but at most once per ``refetch_interval``, so made-up key ids
cannot make the broker hammer the provider.  When the provider cannot be reached
the keys already known stay in use.

:class:`Verifier` holds one cache per issuer and takes the HTTP fetch and the
clock as arguments, so the whole path runs against a fake clock in tests.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from server.addresses import is_loopback
from server.errors import NotAuthenticated, Unavailable

if TYPE_CHECKING:
    import jwt

log = logging.getLogger(__name__)

ALGORITHMS = ("RS256", "ES256")
DEFAULT_LEEWAY = 30.0
DEFAULT_CACHE_TTL = 3600.0
DEFAULT_REFETCH_INTERVAL = 30.0
MAX_TOKEN_BYTES = 16 * 1024
DISCOVERY_PATH = "/.well-known/openid-configuration"


def load_jwt() -> None:
    """Import PyJWT now.  PyJWT and the ``cryptography`` it verifies signatures with
    (about 9 MB resident) are imported where tokens are checked, so a broker that
    checks none does without them; one that will (an identity provider configured,
    workload identities in the policy) calls this at start so that its first login
    does not wait for the import."""
    import jwt  # noqa: F401


Fetch = Callable[[str], Any]
"""Fetch a URL and return its JSON body; raise Unavailable when that is not possible."""

Clock = Callable[[], float]


def http_fetch(url: str, *, timeout: float = 10.0) -> Any:
    """GET ``url`` and parse its JSON body: the default :data:`Fetch`."""
    import httpx

    try:
        resp = httpx.get(url, timeout=timeout, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise Unavailable(f"cannot reach the identity provider at {url}: {exc}") from None
    if resp.status_code != 200:
        raise Unavailable(f"the identity provider answered {resp.status_code} for {url}")
    try:
        return resp.json()
    except ValueError:
        raise Unavailable(f"the identity provider sent no JSON at {url}") from None


@dataclass(frozen=True)
class VerifiedToken:
    """The facts of a token whose signature and claims were checked."""

    issuer: str
    subject: str
    audiences: tuple[str, ...]
    expires_at: datetime
    jti: str | None
    claims: Mapping[str, Any]


def rejected(what: str, reason: str) -> NotAuthenticated:
    return NotAuthenticated(
        f"{what} rejected: {reason}",
        hint="get a fresh token from your identity provider and try again",
    )


def check_header(header: Any, what: str = "token") -> tuple[str, str | None]:
    """The (algorithm, key id) of an acceptable JOSE header; NotAuthenticated otherwise."""
    if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
        raise rejected(what, "its header names no signature algorithm")
    alg = header["alg"]
    if alg.lower() == "none":
        raise rejected(what, "it is not signed (alg 'none')")
    if alg.upper().startswith("HS"):
        raise rejected(what, f"{alg} is a shared-secret algorithm; only RS256 and ES256 are")
    if alg not in ALGORITHMS:
        raise rejected(what, f"algorithm {alg!r} is not accepted; only RS256 and ES256 are")
    if "crit" in header:
        raise rejected(what, "it uses critical header extensions this broker does not know")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise rejected(what, "its key id (kid) is not text")
    return alg, kid


def shown(value: Any, limit: int = 100) -> str:
    """A claim from a token not yet trusted, quoted and cut short for messages and the audit log."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _number(claims: Mapping[str, Any], name: str, what: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise rejected(what, f"its {name!r} claim is not a time")
    return float(value)


def check_claims(
    claims: Mapping[str, Any],
    *,
    issuer: str,
    audience: str | None,
    nonce: str | None,
    now: float,
    leeway: float = DEFAULT_LEEWAY,
    what: str = "token",
) -> VerifiedToken:
    """Check the registered claims; ``audience`` None leaves the audience to the caller."""
    iss = claims.get("iss")
    if iss != issuer:
        by = shown(iss) if isinstance(iss, str) else "nobody"
        raise rejected(what, f"it was issued by {by}, not by {issuer!r}")
    aud = claims.get("aud")
    audiences = (aud,) if isinstance(aud, str) else aud
    if not isinstance(audiences, list | tuple) or not all(isinstance(a, str) for a in audiences):
        raise rejected(what, "it names no audience (aud)")
    audiences = tuple(audiences)
    if audience is not None:
        if audience not in audiences:
            listed = shown(", ".join(audiences)) if audiences else "none"
            raise rejected(what, f"it was issued for audience {listed}, not for {audience!r}")
        azp = claims.get("azp")
        if len(audiences) > 1 and azp is not None and azp != audience:
            raise rejected(what, f"it was issued to the party {shown(azp)}, not to {audience!r}")
    exp = _number(claims, "exp", what)
    if exp is None:
        raise rejected(what, "it has no expiry (exp)")
    if exp + leeway <= now:
        raise rejected(what, f"it expired at {_when(exp)}")
    nbf = _number(claims, "nbf", what)
    if nbf is not None and nbf - leeway > now:
        raise rejected(what, f"it is not valid before {_when(nbf)}")
    iat = _number(claims, "iat", what)
    if iat is None:
        raise rejected(what, "it has no issue time (iat)")
    if iat - leeway > now:
        raise rejected(what, f"it claims to be issued in the future ({_when(iat)})")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise rejected(what, "it names no subject (sub)")
    if nonce is not None:
        got = claims.get("nonce")
        if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
            raise rejected(what, "its nonce does not match the one this login sent")
    jti = claims.get("jti")
    return VerifiedToken(
        issuer=issuer,
        subject=sub,
        audiences=audiences,
        expires_at=datetime.fromtimestamp(exp, UTC),
        jti=jti if isinstance(jti, str) and jti else None,
        claims=dict(claims),
    )


def _key_fits(jwk: Mapping[str, Any], alg: str) -> bool:
    if jwk.get("use", "sig") != "sig" or jwk.get("alg", alg) != alg:
        return False
    if alg == "RS256":
        return jwk.get("kty") == "RSA"
    return jwk.get("kty") == "EC" and jwk.get("crv") == "P-256"


def _https_or_loopback(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return True
    return parts.scheme == "http" and parts.hostname is not None and is_loopback(parts.hostname)


class IssuerKeys:
    """One issuer's discovery document and signing keys, cached and refreshed on rotation."""

    def __init__(
        self,
        issuer: str,
        fetch: Fetch,
        clock: Clock,
        *,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        refetch_interval: float = DEFAULT_REFETCH_INTERVAL,
    ) -> None:
        self.issuer = issuer
        self._fetch = fetch
        self._clock = clock
        self._cache_ttl = cache_ttl
        self._refetch_interval = refetch_interval
        self._lock = threading.Lock()
        self._keys: list[dict[str, Any]] = []
        self._fetched_at: float | None = None
        self._last_refetch = -math.inf
        self.fetches = 0

    def discovery(self) -> dict[str, Any]:
        url = self.issuer.rstrip("/") + DISCOVERY_PATH
        doc = self._fetch(url)
        if not isinstance(doc, dict):
            raise Unavailable(f"the discovery document at {url} is not a JSON object")
        if doc.get("issuer") != self.issuer:
            raise Unavailable(
                f"the discovery document at {url} names the issuer {doc.get('issuer')!r}, "
                f"not {self.issuer!r}",
                hint="the configured issuer must be exactly the provider's issuer URL",
            )
        return doc

    def _refresh(self) -> None:
        self.fetches += 1
        doc = self.discovery()
        jwks_uri = doc.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not _https_or_loopback(jwks_uri):
            raise Unavailable(f"the issuer {self.issuer} publishes no usable jwks_uri")
        body = self._fetch(jwks_uri)
        keys = body.get("keys") if isinstance(body, dict) else None
        if not isinstance(keys, list):
            raise Unavailable(f"the key set at {jwks_uri} has no 'keys' list")
        self._keys = [k for k in keys if isinstance(k, dict)]
        self._fetched_at = self._clock()

    def _find(self, kid: str | None, alg: str) -> dict[str, Any] | None:
        fitting = [k for k in self._keys if _key_fits(k, alg)]
        if kid is not None:
            fitting = [k for k in fitting if k.get("kid") == kid]
        # Without a kid, only an issuer with a single fitting key is unambiguous.
        return fitting[0] if len(fitting) == 1 else None

    def key(self, kid: str | None, alg: str, what: str = "token") -> jwt.PyJWK:
        with self._lock:
            now = self._clock()
            if self._fetched_at is None or now - self._fetched_at >= self._cache_ttl:
                try:
                    self._refresh()
                except Unavailable:
                    if self._fetched_at is None:
                        raise
                    log.warning("keys of %s not refreshed; using the known ones", self.issuer)
            found = self._find(kid, alg)
            if found is None and now - self._last_refetch >= self._refetch_interval:
                self._last_refetch = now
                try:
                    self._refresh()
                except Unavailable as exc:
                    log.warning("refetching the keys of %s failed: %s", self.issuer, exc.message)
                found = self._find(kid, alg)
        if found is None:
            which = f"key {shown(kid)}" if kid is not None else "a key (the token names no kid)"
            raise rejected(what, f"{which} for {alg} is not among the issuer's published keys")
        import jwt

        try:
            return jwt.PyJWK(found, algorithm=alg)
        except jwt.PyJWTError:
            raise rejected(what, f"the issuer's key {kid!r} is not a usable {alg} key") from None


def unverified_claims(token: str, what: str = "token") -> dict[str, Any]:
    """The claims of ``token`` *without* checking anything: only to pick whose keys to use."""
    import jwt

    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise rejected(what, "it is not a well-formed JWT") from None
    if not isinstance(claims, dict):
        raise rejected(what, "its payload is not a JSON object")
    return claims


class Verifier:
    """Verifies tokens of any number of issuers, each with its own key cache."""

    def __init__(
        self,
        fetch: Fetch = http_fetch,
        clock: Clock = time.time,
        *,
        leeway: float = DEFAULT_LEEWAY,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        refetch_interval: float = DEFAULT_REFETCH_INTERVAL,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self.leeway = leeway
        self._cache_ttl = cache_ttl
        self._refetch_interval = refetch_interval
        self._issuers: dict[str, IssuerKeys] = {}
        self._lock = threading.Lock()

    def keys(self, issuer: str) -> IssuerKeys:
        with self._lock:
            keys = self._issuers.get(issuer)
            if keys is None:
                keys = self._issuers[issuer] = IssuerKeys(
                    issuer,
                    self._fetch,
                    self._clock,
                    cache_ttl=self._cache_ttl,
                    refetch_interval=self._refetch_interval,
                )
            return keys

    def verify(
        self,
        token: str,
        *,
        issuer: str,
        audience: str | None,
        nonce: str | None = None,
        what: str = "token",
    ) -> VerifiedToken:
        """Check ``token`` fully; ``audience`` None leaves the audience check to the caller."""
        if len(token) > MAX_TOKEN_BYTES:
            raise rejected(what, "it is implausibly large")
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise rejected(what, "it is not a well-formed JWT") from None
        alg, kid = check_header(header, what)
        key = self.keys(issuer).key(kid, alg, what)
        try:
            decoded = jwt.api_jws.decode_complete(token, key, algorithms=[alg])
        except jwt.InvalidSignatureError:
            raise rejected(what, "its signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise rejected(what, f"it cannot be verified ({exc})") from None
        try:
            claims = json.loads(decoded["payload"])
        except ValueError:
            raise rejected(what, "its payload is not JSON") from None
        if not isinstance(claims, dict):
            raise rejected(what, "its payload is not a JSON object")
        return check_claims(
            claims,
            issuer=issuer,
            audience=audience,
            nonce=nonce,
            now=self._clock(),
            leeway=self.leeway,
            what=what,
        )


def person_from_claims(
    claims: Mapping[str, Any], identity_claims: tuple[str, ...], groups_claim: str
) -> tuple[str, tuple[str, ...]]:
    """The identity and groups an ID token vouches for; NotAuthenticated when it names nobody.

    The first of ``identity_claims`` present in the token names the person.  An
    ``email`` the provider says it has not verified is refused rather than
    skipped: falling back silently would make the same person someone else.
    Groups may come as a list or, from some providers, as a single name.
    """
    what = "ID token"
    name: str | None = None
    for claim in identity_claims:
        value = claims.get(claim)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise rejected(what, f"its {claim!r} claim is not text")
        if claim == "email" and claims.get("email_verified") is False:
            raise rejected(what, "the identity provider has not verified its e-mail address")
        name = value
        break
    if name is None:
        raise rejected(what, f"it has none of the identity claims {', '.join(identity_claims)}")
    if not _plain_label(name):
        raise rejected(what, "its identity is empty, too long or has control characters")
    raw = claims.get(groups_claim, [])
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list):
        raise rejected(what, f"its {groups_claim!r} claim is not a list of group names")
    groups = sorted({g for g in items if isinstance(g, str) and _plain_label(g)})
    return name, tuple(groups)


def _plain_label(text: str) -> bool:
    return 0 < len(text) <= 200 and text == text.strip() and text.isprintable()
