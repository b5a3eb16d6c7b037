"""ID-token verification: header and claim rules as tables, the key cache on a fake clock,
and real tokens from a real provider on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from server.errors import NotAuthenticated, Unavailable
from server.identity.oidc import (
    IssuerKeys,
    Verifier,
    check_claims,
    check_header,
    http_fetch,
    person_from_claims,
)
from tests.fix_oidc import CLIENT_ID, OidcProvider, SigningKey

ISS = "https://idp.example.com"
NOW = 1_800_000_000.0


# --------------------------------------------------------------------------- header


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ({"alg": "RS256", "kid": "a"}, ("RS256", "a")),
        ({"alg": "ES256"}, ("ES256", None)),
        ({"alg": "none"}, "not signed (alg 'none')"),
        ({"alg": "NONE"}, "not signed (alg 'none')"),
        ({"alg": "HS256", "kid": "a"}, "HS256 is a shared-secret algorithm"),
        ({"alg": "HS512"}, "HS512 is a shared-secret algorithm"),
        ({"alg": "RS384"}, "algorithm 'RS384' is not accepted"),
        ({"alg": "PS256"}, "algorithm 'PS256' is not accepted"),
        ({"alg": "EdDSA"}, "algorithm 'EdDSA' is not accepted"),
        ({"typ": "JWT"}, "names no signature algorithm"),
        ({"alg": 256}, "names no signature algorithm"),
        ({"alg": "RS256", "crit": ["b64"]}, "critical header extensions"),
        ({"alg": "RS256", "kid": 7}, "key id (kid) is not text"),
        ([], "names no signature algorithm"),
    ],
)
def test_check_header(header: Any, expected: tuple[str, str | None] | str) -> None:
    if isinstance(expected, tuple):
        assert check_header(header) == expected
        return
    with pytest.raises(NotAuthenticated) as caught:
        check_header(header, "ID token")
    assert caught.value.message.startswith("ID token rejected: ")
    assert expected in caught.value.message


# --------------------------------------------------------------------------- claims


def good(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISS,
        "aud": CLIENT_ID,
        "sub": "u-1",
        "iat": NOW - 10,
        "exp": NOW + 300,
        "nonce": "n-1",
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.mark.parametrize(
    ("claims", "nonce", "problem"),
    [
        (good(), "n-1", None),
        (good(), None, None),  # the flow sent no nonce: nothing to compare
        (good(aud=["other", CLIENT_ID]), None, None),
        (good(exp=NOW - 20), None, None),  # within the leeway
        (good(exp=NOW - 31), None, "it expired at 2027-01-15 07:59:29 UTC"),
        (good(exp=None), None, "no expiry (exp)"),
        (good(exp="tomorrow"), None, "'exp' claim is not a time"),
        (good(exp=True), None, "'exp' claim is not a time"),
        (good(nbf=NOW + 60), None, "not valid before"),
        (good(nbf=NOW + 20), None, None),
        (good(iat=NOW + 60), None, "issued in the future"),
        (good(iat=None), None, "no issue time (iat)"),
        (good(iss="https://evil.example.com"), None, "issued by 'https://evil.example.com'"),
        (good(iss=None), None, "issued by nobody"),
        (good(aud="someone-else"), None, "issued for audience 'someone-else', not for"),
        (good(aud=None), None, "names no audience"),
        (good(aud=[1]), None, "names no audience"),
        (good(aud=["a", CLIENT_ID], azp="a"), None, "issued to the party 'a'"),
        (good(sub=None), None, "names no subject"),
        (good(sub=""), None, "names no subject"),
        (good(), "n-2", "nonce does not match"),
        (good(nonce=None), "n-1", "nonce does not match"),
    ],
)
def test_check_claims(claims: dict[str, Any], nonce: str | None, problem: str | None) -> None:
    def run() -> Any:
        return check_claims(claims, issuer=ISS, audience=CLIENT_ID, nonce=nonce, now=NOW)

    if problem is None:
        verified = run()
        assert verified.subject == claims["sub"]
        assert CLIENT_ID in verified.audiences
        return
    with pytest.raises(NotAuthenticated) as caught:
        run()
    assert problem in caught.value.message


def test_check_claims_without_audience_leaves_it_to_the_caller() -> None:
    verified = check_claims(
        good(aud=["x", "y"], jti="j-1"), issuer=ISS, audience=None, nonce=None, now=NOW
    )
    assert verified.audiences == ("x", "y")
    assert verified.jti == "j-1"


# --------------------------------------------------------------------------- identity


@pytest.mark.parametrize(
    ("claims", "identity_claims", "expected"),
    [
        (
            {"email": "a@x", "sub": "1", "groups": ["dev", "ops"]},
            ("email", "sub"),
            ("a@x", ("dev", "ops")),
        ),
        ({"sub": "1", "groups": ["dev"]}, ("email", "sub"), ("1", ("dev",))),
        ({"email": "", "sub": "1"}, ("email", "sub"), ("1", ())),
        ({"email": "a@x", "email_verified": True}, ("email",), ("a@x", ())),
        ({"email": "a@x", "groups": "dba"}, ("email",), ("a@x", ("dba",))),
        ({"email": "a@x", "groups": ["b", "a", "a", 3, " x", ""]}, ("email",), ("a@x", ("a", "b"))),
        ({"preferred_username": "al", "email": "a@x"}, ("preferred_username",), ("al", ())),
        ({"email": "a@x", "email_verified": False, "sub": "1"}, ("email", "sub"), "not verified"),
        ({"sub": "1"}, ("email",), "none of the identity claims email"),
        ({"email": ["a@x"]}, ("email",), "'email' claim is not text"),
        ({"email": "a\nb@x"}, ("email",), "control characters"),
        ({"email": "a" * 201}, ("email",), "too long"),
        ({"email": "a@x", "groups": {"dev": True}}, ("email",), "not a list of group names"),
    ],
)
def test_person_from_claims(
    claims: dict[str, Any], identity_claims: tuple[str, ...], expected: Any
) -> None:
    if isinstance(expected, tuple):
        assert person_from_claims(claims, identity_claims, "groups") == expected
        return
    with pytest.raises(NotAuthenticated) as caught:
        person_from_claims(claims, identity_claims, "groups")
    assert expected in caught.value.message


# --------------------------------------------------------------------------- key cache


class FakeIdp:
    """Discovery and JWKS documents as plain data, and a clock the test moves."""

    def __init__(self) -> None:
        self.now = NOW
        self.keys = [SigningKey.new("RS256")]
        self.down = False
        self.fetched: list[str] = []

    def fetch(self, url: str) -> Any:
        self.fetched.append(url)
        if self.down:
            raise Unavailable("provider down")
        if url.endswith("/.well-known/openid-configuration"):
            return {"issuer": ISS, "jwks_uri": f"{ISS}/jwks"}
        assert url == f"{ISS}/jwks"
        return {"keys": [k.public_jwk() for k in self.keys]}

    def jwks_fetches(self) -> int:
        return sum(url.endswith("/jwks") for url in self.fetched)


@pytest.fixture
def idp() -> FakeIdp:
    return FakeIdp()


def cache(idp: FakeIdp, **kwargs: float) -> IssuerKeys:
    return IssuerKeys(ISS, idp.fetch, lambda: idp.now, **kwargs)


def test_keys_are_cached_until_their_ttl(idp: FakeIdp) -> None:
    keys = cache(idp, cache_ttl=600)
    kid = idp.keys[0].kid
    keys.key(kid, "RS256")
    keys.key(kid, "RS256")
    assert idp.jwks_fetches() == 1
    idp.now += 601
    keys.key(kid, "RS256")
    assert idp.jwks_fetches() == 2


def test_unknown_kid_refetches_once_then_is_rate_limited(idp: FakeIdp) -> None:
    keys = cache(idp, refetch_interval=30)
    keys.key(idp.keys[0].kid, "RS256")
    rotated = SigningKey.new("RS256")
    idp.keys = [rotated]
    keys.key(rotated.kid, "RS256")  # picked up at once
    assert idp.jwks_fetches() == 2
    with pytest.raises(NotAuthenticated):
        keys.key("k-made-up", "RS256")  # the refetch just above counts
    assert idp.jwks_fetches() == 2
    idp.now += 31
    for _ in range(5):
        with pytest.raises(NotAuthenticated, match="'k-made-up' for RS256 is not among"):
            keys.key("k-made-up", "RS256")
    assert idp.jwks_fetches() == 3  # one refetch for the flood, not five
    idp.now += 31
    with pytest.raises(NotAuthenticated):
        keys.key("k-made-up", "RS256")
    assert idp.jwks_fetches() == 4


def test_known_keys_stay_in_use_while_the_provider_is_down(idp: FakeIdp) -> None:
    keys = cache(idp, cache_ttl=60)
    kid = idp.keys[0].kid
    keys.key(kid, "RS256")
    idp.down = True
    idp.now += 120
    assert keys.key(kid, "RS256").key_id == kid


def test_provider_down_before_any_key_is_unavailable(idp: FakeIdp) -> None:
    idp.down = True
    with pytest.raises(Unavailable):
        cache(idp).key(None, "RS256")


@pytest.mark.parametrize(
    ("published", "kid", "alg", "found"),
    [
        (["RS256"], None, "RS256", True),  # no kid, one fitting key
        (["RS256", "RS256"], None, "RS256", False),  # no kid, ambiguous
        (["RS256", "ES256"], None, "ES256", True),  # the type decides
        (["RS256"], None, "ES256", False),  # an RSA key never verifies ES256
        (["ES256"], "first", "RS256", False),
    ],
)
def test_key_choice_by_kid_and_type(
    idp: FakeIdp, published: list[str], kid: str | None, alg: str, found: bool
) -> None:
    idp.keys = [SigningKey.new(a) for a in published]
    wanted = idp.keys[0].kid if kid == "first" else kid
    keys = cache(idp)
    if found:
        assert keys.key(wanted, alg) is not None
    else:
        with pytest.raises(NotAuthenticated, match="not among the issuer's published keys"):
            keys.key(wanted, alg)


def test_discovery_must_name_the_configured_issuer(idp: FakeIdp) -> None:
    keys = IssuerKeys(ISS + "/", idp.fetch, lambda: idp.now)
    with pytest.raises(Unavailable, match=r"names the issuer 'https://idp\.example\.com'"):
        keys.key(None, "RS256")


# --------------------------------------------------------------------------- real provider


@pytest.fixture
def provider() -> Iterator[OidcProvider]:
    p = OidcProvider().start()
    try:
        yield p
    finally:
        p.stop()


def verify(p: OidcProvider, verifier: Verifier, token: str, nonce: str | None = None) -> Any:
    return verifier.verify(token, issuer=p.issuer, audience=CLIENT_ID, nonce=nonce, what="ID token")


def test_real_tokens_verify_and_bad_ones_are_refused(provider: OidcProvider) -> None:
    v = Verifier(http_fetch)
    now = int(time.time())
    stranger = SigningKey.new("RS256")
    assert verify(provider, v, provider.mint()).subject == "u-alice"
    assert verify(provider, v, provider.mint(provider.claims(nonce="n")), nonce="n")
    cases = {
        "it expired at": provider.mint(provider.claims(iat=now - 900, exp=now - 600)),
        "for audience 'elsewhere'": provider.mint(provider.claims(aud="elsewhere")),
        "issued by 'http://127.0.0.1:1'": provider.mint(provider.claims(iss="http://127.0.0.1:1")),
        "not signed (alg 'none')": provider.mint(alg="none"),
        "HS256 is a shared-secret algorithm": provider.mint(alg="HS256"),
        "signature does not verify": provider.mint(key=stranger, kid=provider.key.kid),
        f"key {stranger.kid!r} for RS256 is not among": provider.mint(key=stranger),
        "nonce does not match": provider.mint(provider.claims(nonce="other")),
        "not a well-formed JWT": "not-a-jwt",
    }
    for expected, token in cases.items():
        with pytest.raises(NotAuthenticated) as caught:
            verify(provider, v, token, nonce="n" if "nonce" in expected else None)
        assert expected in caught.value.message, (expected, caught.value.message)
        assert token not in caught.value.message


def test_a_tampered_payload_fails_the_signature(provider: OidcProvider) -> None:
    import base64
    import json

    header, payload, signature = provider.mint().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["groups"] = ["admin"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(NotAuthenticated, match="signature does not verify"):
        verify(provider, Verifier(http_fetch), f"{header}.{forged}.{signature}")


def test_rotation_on_a_real_provider(provider: OidcProvider) -> None:
    v = Verifier(http_fetch)
    old = provider.key
    assert verify(provider, v, provider.mint())
    provider.rotate("ES256")  # the old key is retired
    assert verify(provider, v, provider.mint()).subject == "u-alice"
    with pytest.raises(NotAuthenticated, match=f"key '{old.kid}' for RS256 is not among"):
        verify(provider, v, provider.mint(key=old))
    assert provider.jwks_requests == 2
