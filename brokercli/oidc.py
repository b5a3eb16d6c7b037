"""The CLI's side of logging in: getting a token from an identity provider, as a public client.

The broker names the provider (``GET /v1/auth/config``); the CLI finds its
endpoints through ``/.well-known/openid-configuration`` and obtains an ID token
in one of two ways, then hands it to the broker in exchange for a broker token:

- **Authorization code with PKCE** (RFC 7636, RFC 8252): a listener on
  ``127.0.0.1`` at a free port receives the redirect, the browser is opened on
  the authorization URL (``webbrowser``, so ``$BROWSER`` is honoured), and the
  code is redeemed with the PKCE verifier.  ``state`` ties the redirect to this
  login and ``nonce`` ties the ID token to it; the broker checks the nonce.
- **Device authorization grant** (RFC 8628), for machines without a browser:
  the user opens the verification URL anywhere and types the code shown; the
  CLI polls the token endpoint at the interval the provider asks for.

CI jobs and agents do not log in interactively: :func:`workload_token` picks up
the JWT their platform provides (an environment variable named on the command
line, GitHub Actions' token request, GitLab's ``DBACCESS_ID_TOKEN`` or
``CI_JOB_JWT_V2``), which the broker binds to a service identity by its claims.

httpx, ``http.server`` and ``webbrowser`` load inside the functions that use
them, keeping ``dbaccess --help`` fast.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from brokercli.errors import CliError
from brokercli.exit_codes import ExitCode

if TYPE_CHECKING:
    import httpx

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
LOGIN_TIMEOUT = 300.0
GITHUB_URL_VAR = "ACTIONS_ID_TOKEN_REQUEST_URL"
GITHUB_TOKEN_VAR = "ACTIONS_ID_TOKEN_REQUEST_TOKEN"  # noqa: S105 (a variable name)
GITLAB_VARS = ("DBACCESS_ID_TOKEN", "CI_JOB_JWT_V2")

Say = Callable[[str], None]


@dataclass(frozen=True)
class Provider:
    """An identity provider's endpoints, and how this CLI is registered there."""

    issuer: str
    client_id: str
    scopes: tuple[str, ...]
    client_secret: str | None
    token_endpoint: str
    authorization_endpoint: str | None
    device_authorization_endpoint: str | None


@dataclass(frozen=True)
class IdToken:
    """What a login flow yields: the ID token and the nonce it was asked to carry."""

    id_token: str
    nonce: str | None


def _failed(message: str, hint: str | None = None) -> CliError:
    return CliError(message, code=ExitCode.NOT_AUTHENTICATED, hint=hint)


def _safe_url(url: Any, what: str) -> str:
    """Endpoints must be https, except on loopback (a provider on this machine)."""
    parts = urlsplit(url) if isinstance(url, str) else None
    host = parts.hostname if parts else None
    loopback = host in ("localhost", "::1") or (host or "").startswith("127.")
    if parts is None or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
        raise CliError(
            f"the identity provider's {what} is not an https URL: {url!r}",
            code=ExitCode.UNAVAILABLE,
        )
    return str(url)


def _json(resp: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise CliError(
            f"the identity provider answered {resp.status_code} without JSON to the {what}",
            code=ExitCode.UNAVAILABLE,
        )
    return body


def _call(http: httpx.Client, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
    import httpx

    try:
        return http.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        raise CliError(
            f"cannot reach the identity provider ({what}): {exc}", code=ExitCode.UNAVAILABLE
        ) from None


def discover(http: httpx.Client, config: Mapping[str, Any]) -> Provider:
    """The provider the broker names in ``config`` (its ``oidc`` part), with its endpoints."""
    issuer = str(config["issuer"])
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    resp = _call(http, "GET", _safe_url(url, "discovery URL"), "discovery")
    doc = _json(resp, "discovery request")
    if resp.status_code != 200 or doc.get("issuer") != issuer:
        raise CliError(
            f"the identity provider at {issuer} did not describe itself as that issuer",
            code=ExitCode.UNAVAILABLE,
        )
    optional = {
        key: _safe_url(doc[key], key) if doc.get(key) else None
        for key in ("authorization_endpoint", "device_authorization_endpoint")
    }
    secret = config.get("client_secret")
    return Provider(
        issuer=issuer,
        client_id=str(config["client_id"]),
        scopes=tuple(str(s) for s in config.get("scopes") or ("openid",)),
        client_secret=str(secret) if secret else None,
        token_endpoint=_safe_url(doc.get("token_endpoint"), "token endpoint"),
        **optional,
    )


def _client_auth(provider: Provider) -> dict[str, str]:
    form = {"client_id": provider.client_id}
    if provider.client_secret:
        form["client_secret"] = provider.client_secret
    return form


def _id_token(body: Mapping[str, Any]) -> str:
    token = body.get("id_token")
    if not isinstance(token, str) or not token:
        raise _failed(
            "the identity provider returned no ID token",
            hint="the broker's oidc scopes must include openid",
        )
    return token


def _provider_error(body: Mapping[str, Any], what: str) -> CliError:
    error = str(body.get("error") or "error")
    detail = body.get("error_description")
    return _failed(
        f"the identity provider refused the {what}: {error}" + (f" ({detail})" if detail else "")
    )


def pkce_pair() -> tuple[str, str]:
    """A fresh PKCE code verifier and its S256 challenge."""
    verifier = secrets.token_urlsafe(64)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


_DONE_PAGE = (
    b"<!doctype html><title>dbaccess</title>"
    b"<p>Login finished. You can close this tab and go back to the terminal.</p>"
)


def authorization_code_login(
    http: httpx.Client,
    provider: Provider,
    say: Say,
    *,
    open_browser: Callable[[str], bool] | None = None,
    timeout: float = LOGIN_TIMEOUT,
) -> IdToken:
    """Log in through the browser; the provider redirects back to a loopback listener."""
    import queue
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from urllib.parse import parse_qs

    if provider.authorization_endpoint is None:
        raise CliError(
            "the identity provider has no authorization endpoint",
            code=ExitCode.UNAVAILABLE,
            hint="log in with --no-browser (device flow) instead",
        )
    results: queue.Queue[dict[str, str]] = queue.Queue()

    class Callback(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path != "/callback":
                self.send_error(404)
                return
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(_DONE_PAGE)))
            self.end_headers()
            self.wfile.write(_DONE_PAGE)
            results.put(query)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the terminal is for the person, not for access logs

    server = HTTPServer(("127.0.0.1", 0), Callback)
    redirect_uri = f"http://127.0.0.1:{server.server_address[1]}/callback"
    state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    verifier, challenge = pkce_pair()
    url = (
        provider.authorization_endpoint
        + ("&" if "?" in provider.authorization_endpoint else "?")
        + urlencode(
            {
                "response_type": "code",
                "client_id": provider.client_id,
                "redirect_uri": redirect_uri,
                "scope": " ".join(provider.scopes),
                "state": state,
                "nonce": nonce,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
    )
    thread = threading.Thread(target=server.serve_forever, name="login-callback", daemon=True)
    thread.start()
    try:
        say(f"opening the browser to log in; if it does not open, visit:\n  {url}")
        if open_browser is None:
            import webbrowser

            open_browser = webbrowser.open
        if not open_browser(url):
            say("(no browser could be started: open the URL above yourself)")
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _failed(
                    "the login was not completed in time", hint="run dbaccess login again"
                )
            try:
                query = results.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if query.get("state") == state:
                break
            # A stray request (another tab, an old redirect) is not this login's answer.
    finally:
        server.shutdown()
        server.server_close()
    if "error" in query:
        raise _provider_error(query, "login")
    code = query.get("code")
    if not code:
        raise _failed("the identity provider redirected back without a code")
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
        **_client_auth(provider),
    }
    resp = _call(http, "POST", provider.token_endpoint, "token request", data=form)
    body = _json(resp, "token request")
    if resp.status_code != 200:
        raise _provider_error(body, "code exchange")
    return IdToken(_id_token(body), nonce)


def device_login(
    http: httpx.Client,
    provider: Provider,
    say: Say,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> IdToken:
    """Log in with a code typed on another device (RFC 8628), polling until it is approved."""
    if provider.device_authorization_endpoint is None:
        raise CliError(
            "the identity provider does not offer the device flow",
            code=ExitCode.UNAVAILABLE,
            hint="log in with the browser: dbaccess login (without --no-browser)",
        )
    form = {"scope": " ".join(provider.scopes), **_client_auth(provider)}
    resp = _call(
        http, "POST", provider.device_authorization_endpoint, "device authorization", data=form
    )
    body = _json(resp, "device authorization")
    if resp.status_code != 200:
        raise _provider_error(body, "device authorization")
    device_code, user_code = body.get("device_code"), body.get("user_code")
    verification = body.get("verification_uri") or body.get("verification_url")
    if not all(isinstance(v, str) and v for v in (device_code, user_code, verification)):
        raise CliError(
            "the identity provider's device authorization answer is incomplete",
            code=ExitCode.UNAVAILABLE,
        )
    lines = [f"to log in, open {verification} and enter the code {user_code}"]
    if isinstance(body.get("verification_uri_complete"), str):
        lines.append(f"  (or open {body['verification_uri_complete']})")
    lines.append("waiting for the approval ...")
    say("\n".join(lines))
    interval = _positive(body.get("interval"), 5.0)
    deadline = clock() + _positive(body.get("expires_in"), LOGIN_TIMEOUT)
    poll = {"grant_type": DEVICE_GRANT, "device_code": str(device_code), **_client_auth(provider)}
    while clock() < deadline:
        sleep(interval)
        resp = _call(http, "POST", provider.token_endpoint, "token request", data=poll)
        answer = _json(resp, "token request")
        if resp.status_code == 200:
            return IdToken(_id_token(answer), None)
        error = answer.get("error")
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += 5.0
            continue
        if error == "access_denied":
            raise _failed("the login was denied at the identity provider")
        if error == "expired_token":
            break
        raise _provider_error(answer, "device login")
    raise _failed("the code expired before it was approved", hint="run dbaccess login again")


def _positive(value: Any, default: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return default


@dataclass(frozen=True)
class WorkloadToken:
    source: str  # where it came from, for messages: never the token itself
    token: str


def workload_token(
    env: Mapping[str, str],
    *,
    token_env: str | None,
    audience: str,
    http_factory: Callable[[], httpx.Client],
) -> WorkloadToken | None:
    """The CI platform's JWT for this job: from ``token_env`` if named, else auto-detected.

    None when nothing is named and no known CI platform offers a token.
    """
    if token_env is not None:
        value = env.get(token_env, "").strip()
        if not value:
            raise CliError(f"${token_env} is empty or not set", code=ExitCode.USAGE)
        return WorkloadToken(f"${token_env}", value)
    if env.get(GITHUB_URL_VAR) and env.get(GITHUB_TOKEN_VAR):
        with http_factory() as http:
            return WorkloadToken("GitHub Actions", _github_token(http, env, audience))
    for name in GITLAB_VARS:
        value = env.get(name, "").strip()
        if value:
            return WorkloadToken(f"${name}", value)
    return None


def _github_token(http: httpx.Client, env: Mapping[str, str], audience: str) -> str:
    url = env[GITHUB_URL_VAR]
    url += ("&" if "?" in url else "?") + urlencode({"audience": audience})
    resp = _call(
        http,
        "GET",
        url,
        "GitHub Actions token request",
        headers={"Authorization": f"bearer {env[GITHUB_TOKEN_VAR]}"},
    )
    body = _json(resp, "GitHub Actions token request")
    value = body.get("value")
    if resp.status_code != 200 or not isinstance(value, str) or not value:
        raise _failed(
            f"GitHub Actions gave no ID token (HTTP {resp.status_code})",
            hint="the job needs 'permissions: id-token: write'",
        )
    return value
