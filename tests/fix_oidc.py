"""A real OpenID Connect provider on loopback, for tests that log in end to end.

``OidcProvider`` is a small identity provider served by a threaded stdlib HTTP
server on ``127.0.0.1`` at a free port.  Brokers and CLIs started by the tests
talk to it over HTTP like they would to a real one:

- ``/.well-known/openid-configuration`` and ``/jwks`` (public keys; :meth:`rotate`
  replaces the signing key, keeping or retiring the old one);
- ``/authorize`` approves at once as :attr:`user` and redirects back with a code
  (only to loopback redirect URIs, the CLI's http or the broker's web inbox's
  https, only with an S256 PKCE challenge);
- ``/token`` redeems such a code (checking client, redirect URI and the PKCE
  verifier, once) or polls a device code;
- ``/device_authorization`` hands out device and user codes, which a test
  approves with :meth:`approve_device` (as a person typing the code would);
- ``/github/token`` behaves like GitHub Actions' job token endpoint: with the
  request token as bearer it returns a JWT for the asked ``audience`` carrying
  :attr:`github_claims`.

:meth:`mint` makes any token the tests need: any claims, with the current key,
a retired or never-published key, ``alg: none``, or HS256 keyed with the public
key (the key-confusion attack).  The ``oidc_provider`` fixture is one provider
per test module.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

CLIENT_ID = "dbaccess-cli"
GITHUB_REQUEST_TOKEN = "gh-request-token"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    @classmethod
    def new(cls, alg: str = "RS256") -> SigningKey:
        private: Any
        if alg == "RS256":
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        else:
            raise ValueError(alg)
        return cls(kid=f"k-{secrets.token_hex(4)}", alg=alg, private=private)

    def public_jwk(self) -> dict[str, Any]:
        algo = RSAAlgorithm if self.alg == "RS256" else ECAlgorithm
        jwk: dict[str, Any] = json.loads(algo.to_jwk(self.private.public_key()))
        jwk.update(kid=self.kid, use="sig", alg=self.alg)
        return jwk

    def public_pem(self) -> bytes:
        pem: bytes = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem


Reply = tuple[int, dict[str, str], dict[str, Any]]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    claims: dict[str, Any]


@dataclass
class _Device:
    user_code: str
    client_id: str
    expires: float
    claims: dict[str, Any] | None = None
    denied: bool = False
    polls: int = 0


@dataclass
class OidcProvider:
    client_id: str = CLIENT_ID
    device_interval: int = 1
    user: dict[str, Any] = field(
        default_factory=lambda: {"sub": "u-alice", "email": "alice@example.com", "groups": ["dev"]}
    )
    github_claims: dict[str, Any] = field(default_factory=dict)
    keys: list[SigningKey] = field(default_factory=list)
    jwks_requests: int = 0
    _codes: dict[str, _Code] = field(default_factory=dict)
    _devices: dict[str, _Device] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    # -- life cycle ---------------------------------------------------------
    def start(self) -> OidcProvider:
        if not self.keys:
            self.keys = [SigningKey.new("RS256")]
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider._dispatch(self, "GET")

            def do_POST(self) -> None:
                provider._dispatch(self, "POST")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def issuer(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- keys and tokens ------------------------------------------------------
    @property
    def key(self) -> SigningKey:
        """The key new tokens are signed with (the first published one)."""
        return self.keys[0]

    def rotate(self, alg: str = "RS256", *, keep_old: bool = False) -> SigningKey:
        new = SigningKey.new(alg)
        with self._lock:
            self.keys = [new, *(self.keys if keep_old else [])]
        return new

    def claims(self, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        base: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.client_id,
            "iat": now,
            "exp": now + 300,
            "jti": secrets.token_hex(8),
            **self.user,
        }
        base.update(extra)
        return {k: v for k, v in base.items() if v is not None}

    def mint(
        self,
        claims: Mapping[str, Any] | None = None,
        *,
        key: SigningKey | None = None,
        alg: str | None = None,
        kid: str | None = "",
    ) -> str:
        """A token with ``claims`` (default: :meth:`claims`), signed as asked.

        ``alg="none"`` leaves it unsigned; ``alg="HS256"`` signs it with HMAC keyed
        by ``key``'s public key in PEM, as a key-confusion attacker would.
        ``kid=""`` uses the key's own id; None leaves the header without one.
        """
        body = dict(self.claims() if claims is None else claims)
        signer = key or self.key
        header: dict[str, Any] = {"alg": alg or signer.alg, "typ": "JWT"}
        if kid is not None:
            header["kid"] = kid or signer.kid
        if header["alg"] in ("none", "HS256"):
            signing_input = (
                _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(body).encode())
            )
            if header["alg"] == "none":
                return signing_input + "."
            mac = hmac.new(signer.public_pem(), signing_input.encode(), hashlib.sha256)
            return signing_input + "." + _b64(mac.digest())
        extra = {k: v for k, v in header.items() if k != "alg"}
        return jwt.encode(body, signer.private, algorithm=header["alg"], headers=extra)

    # -- device flow ----------------------------------------------------------
    def approve_device(self, user_code: str, claims: Mapping[str, Any] | None = None) -> None:
        with self._lock:
            device = next(d for d in self._devices.values() if d.user_code == user_code)
            device.claims = dict(self.user if claims is None else claims)

    def deny_device(self, user_code: str) -> None:
        with self._lock:
            device = next(d for d in self._devices.values() if d.user_code == user_code)
            device.denied = True

    # -- HTTP -----------------------------------------------------------------
    def _dispatch(self, req: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(req.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        form: dict[str, str] = {}
        if method == "POST":
            length = int(req.headers.get("Content-Length") or 0)
            form = {k: v[0] for k, v in parse_qs(req.rfile.read(length).decode()).items()}
        routes = {
            ("GET", "/.well-known/openid-configuration"): lambda: self._discovery(),
            ("GET", "/jwks"): lambda: self._jwks(),
            ("GET", "/authorize"): lambda: self._authorize(query),
            ("POST", "/token"): lambda: self._token(form),
            ("POST", "/device_authorization"): lambda: self._device_authorization(form),
            ("GET", "/github/token"): lambda: self._github(query, req.headers),
        }
        route = routes.get((method, parts.path))
        status, headers, body = route() if route else (404, {}, {"error": "not_found"})
        payload = json.dumps(body).encode()
        req.send_response(status)
        for name, value in headers.items():
            req.send_header(name, value)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(payload)))
        req.end_headers()
        req.wfile.write(payload)

    def _discovery(self) -> Reply:
        iss = self.issuer
        return (
            200,
            {},
            {
                "issuer": iss,
                "jwks_uri": f"{iss}/jwks",
                "authorization_endpoint": f"{iss}/authorize",
                "token_endpoint": f"{iss}/token",
                "device_authorization_endpoint": f"{iss}/device_authorization",
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                "code_challenge_methods_supported": ["S256"],
            },
        )

    def _jwks(self) -> Reply:
        with self._lock:
            self.jwks_requests += 1
            keys = [k.public_jwk() for k in self.keys]
        return 200, {}, {"keys": keys}

    def _authorize(self, q: dict[str, str]) -> Reply:
        redirect = q.get("redirect_uri", "")
        target = urlsplit(redirect)
        if (
            q.get("client_id") != self.client_id
            or q.get("response_type") != "code"
            or target.scheme not in ("http", "https")
            or target.hostname != "127.0.0.1"
            or q.get("code_challenge_method") != "S256"
            or not q.get("code_challenge")
        ):
            return 400, {}, {"error": "invalid_request"}
        code = secrets.token_urlsafe(16)
        with self._lock:
            self._codes[code] = _Code(
                self.client_id, redirect, q["code_challenge"], q.get("nonce"), dict(self.user)
            )
        location = redirect + "?" + urlencode({"code": code, "state": q.get("state", "")})
        return 302, {"Location": location}, {}

    def _id_token_for(self, user: Mapping[str, Any], nonce: str | None) -> dict[str, Any]:
        token = self.mint(self.claims(**user, nonce=nonce))
        return {
            "access_token": secrets.token_urlsafe(16),
            "token_type": "Bearer",
            "id_token": token,
        }

    def _token(self, f: dict[str, str]) -> Reply:
        if f.get("client_id") != self.client_id:
            return 401, {}, {"error": "invalid_client"}
        grant = f.get("grant_type")
        if grant == "authorization_code":
            with self._lock:
                code = self._codes.pop(f.get("code", ""), None)
            challenge = _b64(hashlib.sha256(f.get("code_verifier", "").encode()).digest())
            if code is None or code.redirect_uri != f.get("redirect_uri"):
                return 400, {}, {"error": "invalid_grant"}
            if not hmac.compare_digest(challenge, code.challenge):
                return 400, {}, {"error": "invalid_grant", "error_description": "PKCE failed"}
            return 200, {}, self._id_token_for(code.claims, code.nonce)
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            with self._lock:
                device = self._devices.get(f.get("device_code", ""))
                if device is None:
                    return 400, {}, {"error": "invalid_grant"}
                device.polls += 1
                if device.denied:
                    return 400, {}, {"error": "access_denied"}
                if time.time() > device.expires:
                    return 400, {}, {"error": "expired_token"}
                if device.claims is None:
                    return 400, {}, {"error": "authorization_pending"}
                self._devices.pop(f["device_code"])
                claims = device.claims
            return 200, {}, self._id_token_for(claims, None)
        return 400, {}, {"error": "unsupported_grant_type"}

    def _device_authorization(self, f: dict[str, str]) -> Reply:
        if f.get("client_id") != self.client_id:
            return 401, {}, {"error": "invalid_client"}
        device_code = secrets.token_urlsafe(24)
        letters = "BCDFGHJKLMNPQRSTVWXZ"
        user_code = "".join(secrets.choice(letters) for _ in range(8))
        user_code = f"{user_code[:4]}-{user_code[4:]}"
        with self._lock:
            self._devices[device_code] = _Device(user_code, f["client_id"], time.time() + 300)
        return (
            200,
            {},
            {
                "device_code": device_code,
                "user_code": user_code,
                "verification_uri": f"{self.issuer}/device",
                "expires_in": 300,
                "interval": self.device_interval,
            },
        )

    def _github(self, q: dict[str, str], headers: Any) -> Reply:
        if headers.get("Authorization") != f"bearer {GITHUB_REQUEST_TOKEN}":
            return 401, {}, {"message": "bad request token"}
        claims = self.claims(aud=q.get("audience", self.issuer), **self.github_claims)
        for person in ("email", "groups"):
            claims.pop(person, None)
        return 200, {}, {"value": self.mint(claims)}


@pytest.fixture(scope="module")
def oidc_provider() -> Iterator[OidcProvider]:
    provider = OidcProvider().start()
    try:
        yield provider
    finally:
        provider.stop()
