"""The CLI's side of OIDC against a real provider on loopback: discovery, device flow, PKCE
and finding a CI job's token."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest

from brokercli import oidc
from brokercli.errors import CliError
from brokercli.exit_codes import ExitCode
from tests.fix_oidc import CLIENT_ID, GITHUB_REQUEST_TOKEN, OidcProvider


@pytest.fixture
def provider() -> Iterator[OidcProvider]:
    p = OidcProvider().start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def config(p: OidcProvider) -> dict[str, Any]:
    return {"issuer": p.issuer, "client_id": CLIENT_ID, "scopes": ["openid", "email"]}


def test_pkce_pair_follows_rfc_7636() -> None:
    verifier, challenge = oidc.pkce_pair()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43,128}", verifier)
    digest = hashlib.sha256(verifier.encode()).digest()
    assert challenge == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert oidc.pkce_pair()[0] != verifier


def test_discovery_finds_the_endpoints(provider: OidcProvider, http: httpx.Client) -> None:
    found = oidc.discover(http, config(provider))
    assert found.token_endpoint == f"{provider.issuer}/token"
    assert found.device_authorization_endpoint == f"{provider.issuer}/device_authorization"
    assert found.scopes == ("openid", "email")


def test_discovery_refuses_a_provider_claiming_another_issuer(
    provider: OidcProvider, http: httpx.Client
) -> None:
    with pytest.raises(CliError, match="did not describe itself as that issuer"):
        oidc.discover(http, {**config(provider), "issuer": provider.issuer + "/"})


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://idp.example.com/token", True),
        ("http://127.0.0.1:8080/token", True),
        ("http://localhost/token", True),
        ("http://idp.example.com/token", False),
        ("ftp://idp.example.com/token", False),
        (None, False),
    ],
)
def test_endpoints_must_be_https_except_on_loopback(url: Any, ok: bool) -> None:
    if ok:
        assert oidc._safe_url(url, "token endpoint") == url
    else:
        with pytest.raises(CliError, match="is not an https URL"):
            oidc._safe_url(url, "token endpoint")


def test_device_flow_polls_until_approved(provider: OidcProvider, http: httpx.Client) -> None:
    found = oidc.discover(http, config(provider))
    said: list[str] = []

    def approve_while_waiting(_seconds: float) -> None:
        code = re.search(r"enter the code (\S+)", said[0])
        assert code is not None
        if provider._devices and next(iter(provider._devices.values())).polls >= 1:
            provider.approve_device(code.group(1), {"sub": "u-dan", "email": "dan@example.com"})

    result = oidc.device_login(http, found, said.append, sleep=approve_while_waiting)
    assert result.nonce is None
    claims = jwt.decode(result.id_token, options={"verify_signature": False})
    assert claims["email"] == "dan@example.com"
    assert next(iter(provider._devices.values()), None) is None  # redeemed


def test_device_flow_gives_up_when_the_code_expires(
    provider: OidcProvider, http: httpx.Client
) -> None:
    found = oidc.discover(http, config(provider))
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds * 100  # nobody approves; time flies

    with pytest.raises(CliError) as caught:
        oidc.device_login(http, found, lambda _: None, sleep=sleep, clock=lambda: now[0])
    assert caught.value.code == ExitCode.NOT_AUTHENTICATED
    assert "expired before it was approved" in caught.value.message


def test_authorization_code_flow_with_an_injected_browser(
    provider: OidcProvider, http: httpx.Client
) -> None:
    found = oidc.discover(http, config(provider))
    opened: list[str] = []

    def browser(url: str) -> bool:
        opened.append(url)
        httpx.get(url, follow_redirects=True, timeout=10)
        return True

    result = oidc.authorization_code_login(http, found, lambda _: None, open_browser=browser)
    claims = jwt.decode(result.id_token, options={"verify_signature": False})
    assert claims["nonce"] == result.nonce
    assert "code_challenge_method=S256" in opened[0]
    assert "redirect_uri=http%3A%2F%2F127.0.0.1%3A" in opened[0]


def test_authorization_error_is_reported(provider: OidcProvider, http: httpx.Client) -> None:
    found = oidc.discover(http, config(provider))

    def browser(url: str) -> bool:
        asked = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        back = {"state": asked["state"], "error": "access_denied", "error_description": "no"}
        httpx.get(asked["redirect_uri"], params=back, timeout=10)
        return True

    with pytest.raises(CliError, match="refused the login: access_denied \\(no\\)"):
        oidc.authorization_code_login(http, found, lambda _: None, open_browser=browser)


def factory() -> httpx.Client:
    return httpx.Client(timeout=10)


@pytest.mark.parametrize(
    ("env", "token_env", "expected"),
    [
        ({"MY_JWT": "a.b.c"}, "MY_JWT", ("$MY_JWT", "a.b.c")),
        (
            {"DBACCESS_ID_TOKEN": "g.l.1", "CI_JOB_JWT_V2": "g.l.2"},
            None,
            ("$DBACCESS_ID_TOKEN", "g.l.1"),
        ),
        ({"CI_JOB_JWT_V2": "g.l.2"}, None, ("$CI_JOB_JWT_V2", "g.l.2")),
        ({"CI_JOB_JWT_V2": " "}, None, None),
        ({"ACTIONS_ID_TOKEN_REQUEST_URL": "http://127.0.0.1:9/x"}, None, None),  # no request token
        ({}, None, None),
    ],
)
def test_workload_token_sources(
    env: dict[str, str], token_env: str | None, expected: tuple[str, str] | None
) -> None:
    found = oidc.workload_token(env, token_env=token_env, audience="dbaccess", http_factory=factory)
    assert (None if found is None else (found.source, found.token)) == expected


def test_named_variable_must_be_set() -> None:
    with pytest.raises(CliError) as caught:
        oidc.workload_token({}, token_env="NOPE", audience="x", http_factory=factory)
    assert caught.value.code == ExitCode.USAGE


def test_github_actions_token_request(provider: OidcProvider) -> None:
    env = {
        "ACTIONS_ID_TOKEN_REQUEST_URL": f"{provider.issuer}/github/token?api-version=2.0",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": GITHUB_REQUEST_TOKEN,
    }
    provider.github_claims = {"repository": "org/app"}
    found = oidc.workload_token(env, token_env=None, audience="aud-x", http_factory=factory)
    assert found is not None and found.source == "GitHub Actions"
    claims = jwt.decode(found.token, options={"verify_signature": False})
    assert (claims["aud"], claims["repository"]) == ("aud-x", "org/app")

    env["ACTIONS_ID_TOKEN_REQUEST_TOKEN"] = "wrong"
    with pytest.raises(CliError) as caught:
        oidc.workload_token(env, token_env=None, audience="aud-x", http_factory=factory)
    assert caught.value.code == ExitCode.NOT_AUTHENTICATED
    assert caught.value.hint is not None and "id-token: write" in caught.value.hint
