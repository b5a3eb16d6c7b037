"""Typed HTTP client for the broker API.

Every broker error comes back as JSON ``{"error", "message", "hint"}``; this
module turns it into a ``CliError`` carrying the documented exit code, so
commands never look at HTTP statuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from brokercli import tokens
from brokercli.config import Settings, settings
from brokercli.errors import CliError
from brokercli.exit_codes import BY_ERROR_KIND, BY_STATUS, ExitCode
from common.validation import validation_message


@dataclass(frozen=True)
class GatewayEndpoint:
    host: str
    port: int
    tls: bool
    ca_fingerprint: str | None


@dataclass(frozen=True)
class StartedSession:
    id: str
    identity: str
    target: str
    scope: str
    database: str
    expires_at: str
    ticket: str
    gateway: GatewayEndpoint
    raw: dict[str, Any]


def ca_context(ca_file: str | None) -> Any:
    """A verifying TLS client context trusting ``ca_file`` (else the system's CAs)."""
    import ssl

    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise CliError(
            f"cannot use the CA file {ca_file}: {getattr(exc, 'strerror', None) or exc}",
            code=ExitCode.USAGE,
            hint="give a readable PEM file with --ca-file or DBACCESS_CA_FILE",
        ) from None


class BrokerClient:
    """One keep-alive HTTPS connection to the broker, on the standard library.

    ``http.client`` instead of an HTTP library keeps every command's start-up
    short: scripts call ``dbaccess exec`` in loops.
    """

    def __init__(self, cfg: Settings, token: str | None, *, timeout: float = 30.0) -> None:
        from urllib.parse import urlsplit

        self.cfg = cfg
        self.token = token
        self._timeout = timeout
        url = urlsplit(cfg.server)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise CliError(
                f"the broker URL {cfg.server!r} is not an http(s) URL",
                code=ExitCode.USAGE,
                hint=f"fix it in {cfg.source}",
            )
        self._scheme = url.scheme
        self._host = url.hostname
        self._port = url.port
        self._base = url.path.rstrip("/")
        self._conn: Any = None

    def _connection(self) -> Any:
        import http.client

        if self._conn is None:
            if self._scheme == "https":
                ctx = ca_context(self.cfg.ca_file)
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=ctx
                )
            else:
                self._conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
        return self._conn

    @classmethod
    def from_env(
        cls, server_flag: str | None = None, *, require_token: bool = True, timeout: float = 30.0
    ) -> BrokerClient:
        cfg = settings(server_flag)
        token = tokens.load(cfg.server)
        if require_token and not token:
            raise CliError(
                f"not logged in to {cfg.server}",
                code=ExitCode.NOT_AUTHENTICATED,
                hint="run dbaccess login (or set DBACCESS_TOKEN in CI)",
            )
        return cls(cfg, token, timeout=timeout)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        import json as jsonlib
        from urllib.parse import urlencode

        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        body = None
        if json is not None:
            body = jsonlib.dumps(json).encode()
            headers["Content-Type"] = "application/json"
        url = self._base + path
        if params:
            query = {
                k: ("true" if v is True else "false" if v is False else v)
                for k, v in params.items()
                if v is not None
            }
            url += "?" + urlencode(query)
        status, reason, data = self._send(method, url, body, headers)
        parsed: Any = None
        if data:
            try:
                parsed = jsonlib.loads(data)
            except ValueError:
                parsed = None
        if status >= 400:
            self._raise(status, reason, parsed, data)
        return parsed

    def _send(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, str, bytes]:
        import ssl

        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, url, body=body, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.reason, resp.read()
            except ssl.SSLCertVerificationError as exc:
                self.close()
                raise CliError(
                    f"the broker at {self.cfg.server} presented a certificate that does not "
                    f"verify: {exc.verify_message}",
                    code=ExitCode.UNAVAILABLE,
                    hint="give the broker's CA with --ca-file or DBACCESS_CA_FILE "
                    "(dbaccess login --ca-file remembers it)",
                ) from None
            except (OSError, ConnectionError) as exc:
                self.close()
                # A kept-alive connection the server closed meanwhile: one retry.
                if attempt == 1 and isinstance(exc, ConnectionError):
                    continue
                raise CliError(
                    f"cannot reach the broker at {self.cfg.server}: {exc}",
                    code=ExitCode.UNAVAILABLE,
                    hint=f"is the broker running? (server URL from {self.cfg.source})",
                ) from None
        raise AssertionError("unreachable")

    @staticmethod
    def _raise(status: int, reason: str, body: Any, raw: bytes) -> None:
        if not isinstance(body, dict):
            body = {}
        kind = str(body.get("error") or "")
        message = _one_line(body.get("message") or _detail(body.get("detail")))
        if not message:
            # Not the broker's own error body (a proxy's page, an old broker):
            # say what came back rather than printing it.
            message = f"the broker answered {status} {reason}".rstrip()
        code = BY_ERROR_KIND.get(kind) or BY_STATUS.get(status)
        if code is None:
            code = ExitCode.UNAVAILABLE if status >= 500 else ExitCode.ERROR
        hint = _one_line(body.get("hint")) or None
        raise CliError(message, code=code, hint=hint, details=body)

    # -- endpoints ------------------------------------------------------------
    def whoami(self) -> dict[str, Any]:
        return dict(self.request("GET", "/v1/whoami"))

    def targets(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/targets"))

    def start_session(
        self,
        target: str,
        scope: str | None,
        ttl: str | None,
        reason: str | None,
        client: dict[str, str],
        *,
        break_glass: bool = False,
        request_id: str | None = None,
    ) -> StartedSession:
        body: dict[str, Any] = {
            "target": target,
            "scope": scope,
            "ttl": ttl,
            "reason": reason,
            "client": client,
        }
        if break_glass:
            body["break_glass"] = True
        if request_id:
            body["request_id"] = request_id
        data = self.request("POST", "/v1/sessions", json=body)
        gw = data["gateway"]
        s = data["session"]
        return StartedSession(
            id=s["id"],
            identity=s["identity"],
            target=s["target"],
            scope=s["scope"],
            database=data["database"],
            expires_at=s["expires_at"],
            ticket=data["ticket"],
            gateway=GatewayEndpoint(
                gw["host"], int(gw["port"]), bool(gw["tls"]), gw.get("ca_fingerprint")
            ),
            raw=s,
        )

    def end_session(self, session_id: str) -> dict[str, Any]:
        return dict(self.request("DELETE", f"/v1/sessions/{session_id}"))

    def sessions(self, *, active: bool | None, all_: bool, limit: int) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit, "all": all_}
        if active is not None:
            params["active"] = active
        return list(self.request("GET", "/v1/sessions", params=params))

    def session(self, session_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/sessions/{session_id}"))

    def audit(self, **params: Any) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/audit", params=params))

    def audit_access(self, **params: Any) -> list[dict[str, Any]]:
        """Statements that touched data (or, with ``summary``, counts by identity and relation)."""
        return list(self.request("GET", "/v1/audit/access", params=params))

    def audit_report(self, **params: Any) -> dict[str, Any]:
        """The evidence report of a period, as JSON."""
        return dict(self.request("GET", "/v1/audit/report", params=params))

    def audit_verify(self) -> dict[str, Any]:
        return dict(self.request("GET", "/v1/audit/verify"))

    def recording(self, session_id: str) -> dict[str, Any]:
        """A session's recording: the session, the recording's state, its events in order."""
        return dict(self.request("GET", f"/v1/sessions/{session_id}/recording"))

    # -- access requests --------------------------------------------------------
    def create_request(
        self,
        target: str,
        scope: str | None,
        ttl: str | None,
        reason: str | None,
        start_at: str | None,
    ) -> dict[str, Any]:
        body = {
            "target": target,
            "scope": scope,
            "ttl": ttl,
            "reason": reason,
            "start_at": start_at,
        }
        return dict(self.request("POST", "/v1/requests", json=body))

    def requests(self, *, pending: bool, mine: bool, to_review: bool) -> list[dict[str, Any]]:
        flags = {"pending": pending, "mine": mine, "to_review": to_review}
        params = {name: True for name, on in flags.items() if on}
        return list(self.request("GET", "/v1/requests", params=params))

    def request_review(
        self, target: str, scope: str | None, statement: str, reason: str | None
    ) -> dict[str, Any]:
        body = {"target": target, "scope": scope, "statement": statement, "reason": reason}
        return dict(self.request("POST", "/v1/reviews", json=body))

    def access_request(self, request_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/requests/{request_id}"))

    def decide_request(self, request_id: str, verb: str, **note: str | None) -> dict[str, Any]:
        """``verb`` is approve, deny, cancel or revoke; ``note`` a comment or reason."""
        return dict(self.request("POST", f"/v1/requests/{request_id}/{verb}", json=note))

    # -- authentication ---------------------------------------------------------
    def auth_config(self) -> dict[str, Any]:
        return dict(self.request("GET", "/v1/auth/config"))

    def exchange_oidc(self, id_token: str, nonce: str | None) -> dict[str, Any]:
        body = {"id_token": id_token, "nonce": nonce}
        return dict(self.request("POST", "/v1/auth/oidc", json=body))

    def exchange_workload(self, token: str) -> dict[str, Any]:
        return dict(self.request("POST", "/v1/auth/workload", json={"token": token}))

    def logout(self) -> dict[str, Any]:
        return dict(self.request("POST", "/v1/auth/logout"))


def _one_line(value: Any) -> str:
    return " ".join(str(value).split()) if value else ""


def _detail(detail: Any) -> str:
    """FastAPI's ``detail``: a string, or pydantic's list of errors (one line each, joined)."""
    if isinstance(detail, list):
        return validation_message(err for err in detail if isinstance(err, dict))
    return str(detail) if isinstance(detail, str) else ""
