"""Per-connection gateway logic, without sockets.

Three small state machines, each fed bytes or messages and answering with bytes
to send; ``server.py`` (the only module that touches sockets) drives them.

* ``ClientStartup`` — the client's first packets: answers SSLRequest with
  ``S`` when the gateway has a certificate (the shell then starts TLS) and
  ``N`` otherwise, GSSENCRequest always with ``N``; refuses a StartupMessage
  sent in clear when TLS is required; reads the StartupMessage, refuses startup
  parameters that are not on the allow-list, asks for a cleartext password
  (safe: the hop is encrypted or loopback) and yields the session ticket.
* ``UpstreamLogin`` — logs in to the target as the session's role with
  SCRAM-SHA-256 (:class:`server.scram.ScramClient`) and collects ParameterStatus
  until ReadyForQuery, so the client sees one clean startup sequence with the
  gateway's own BackendKeyData.  A cleartext password (how RDS takes IAM
  tokens) is sent only when the connection is TLS that verified the server
  (``tls_verified``).

In the relay phase ``relay.py`` refuses every client message type that is not
in ``KNOWN_FRONTEND``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import Enum

from server.gateway import pgwire
from server.gateway.pgwire import ProtocolViolation, RawMessage
from server.gateway.sqlcheck import parse_search_path
from server.scram import ScramClient

# Startup parameters a client may set.  Anything else ("options", "replication",
# "_pq_.*", unknown GUCs) changes how the server reads SQL or who runs it.
ALLOWED_STARTUP = frozenset(
    {
        "user",
        "database",
        "application_name",
        "client_encoding",
        "datestyle",
        "timezone",
        "extra_float_digits",
        "intervalstyle",
        "search_path",
        # Limits: refused once the session is known if its scope pins them
        # (``server.gateway.pinning``), passed on otherwise.
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "idle_session_timeout",
        "temp_file_limit",
        "default_transaction_read_only",
        "default_transaction_isolation",
        "bytea_output",
    }
)
# Parameters forwarded upstream as the client gave them (case-folded names).
FORWARDED_STARTUP = ALLOWED_STARTUP - {"user", "database", "client_encoding"}

SSL_REQUEST = pgwire.SSL_REQUEST_CODE
GSSENC_REQUEST = pgwire.GSSENC_REQUEST_CODE
CANCEL_REQUEST = pgwire.CANCEL_REQUEST_CODE
PROTOCOL_3_0 = pgwire.PROTOCOL_3_0

# Frontend message types of protocol 3.0 after startup (pgwire's table).
KNOWN_FRONTEND = pgwire.FRONTEND_TYPES


class GatewayError(Exception):
    """A refusal to show the client as an ErrorResponse before closing."""

    def __init__(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.hint = hint


def _cstrings(body: bytes) -> list[str]:
    parts = body.split(b"\0")
    if parts[-1] != b"":
        raise ProtocolViolation("startup packet is not NUL-terminated")
    return [p.decode("utf-8", "strict") for p in parts[:-1]]


class StartupPhase(Enum):
    WAIT_STARTUP = "wait-startup"
    WAIT_PASSWORD = "wait-password"  # noqa: S105 - a state name
    DONE = "done"


@dataclass
class StartupResult:
    params: dict[str, str]
    ticket: str


@dataclass
class CancelResult:
    pid: int
    secret: int


@dataclass
class StartTls:
    """The client asked for TLS and the gateway said ``S``: the shell wraps the socket."""


class ClientStartup:
    def __init__(self, *, tls_available: bool = False, tls_required: bool = False) -> None:
        self.phase = StartupPhase.WAIT_STARTUP
        self.params: dict[str, str] = {}
        self.tls_available = tls_available
        self.tls_required = tls_required
        self.tls_active = False

    def handle(
        self, raw: RawMessage
    ) -> tuple[bytes, StartupResult | CancelResult | StartTls | None]:
        """Feed one client message; returns bytes to send back and, when ready, a result."""
        if self.phase is StartupPhase.WAIT_STARTUP:
            if raw.type != 0 or len(raw.body) < 4:
                raise ProtocolViolation("expected a startup packet")
            (code,) = struct.unpack_from("!I", raw.body)
            if code == SSL_REQUEST and self.tls_available and not self.tls_active:
                return b"S", StartTls()
            if code in (SSL_REQUEST, GSSENC_REQUEST):
                return b"N", None
            if code == CANCEL_REQUEST:
                if len(raw.body) != 12:
                    raise ProtocolViolation("malformed CancelRequest")
                pid, secret = struct.unpack_from("!II", raw.body, 4)
                return b"", CancelResult(pid, secret)
            if code >> 16 != 3:
                raise GatewayError(
                    "0A000",
                    f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}",
                    "use a client that speaks protocol 3.0",
                )
            if self.tls_required and not self.tls_active:
                raise GatewayError(
                    "28000",
                    "this gateway accepts only TLS connections",
                    "connect through dbaccess connect/run, or use sslmode=require",
                )
            self.params = self._params(raw.body[4:])
            self.phase = StartupPhase.WAIT_PASSWORD
            negotiate = b""
            if code != PROTOCOL_3_0:
                # Newer minor version: tell the client we speak 3.0.
                negotiate = pgwire.negotiate_protocol_version()
            return negotiate + pgwire.auth_cleartext_request(), None
        if self.phase is StartupPhase.WAIT_PASSWORD:
            if raw.type != ord("p"):
                raise ProtocolViolation("expected a password message")
            ticket = pgwire.PasswordMessage(raw.body).as_password()
            self.phase = StartupPhase.DONE
            return b"", StartupResult(self.params, ticket)
        raise ProtocolViolation("startup already finished")

    @staticmethod
    def _params(body: bytes) -> dict[str, str]:
        try:
            items = _cstrings(body)
        except UnicodeDecodeError:
            raise ProtocolViolation("startup parameters are not valid UTF-8") from None
        if not items or items[-1] != "":
            raise ProtocolViolation("startup parameter list is not terminated")
        items = items[:-1]
        if len(items) % 2:
            raise ProtocolViolation("startup parameters are not name/value pairs")
        params: dict[str, str] = {}
        for name, value in zip(items[::2], items[1::2], strict=True):
            key = name.lower()
            if key.startswith("_pq_."):
                raise GatewayError(
                    "08P01", f"protocol extension {name!r} is not supported", "remove it"
                )
            if key not in ALLOWED_STARTUP:
                raise GatewayError(
                    "42501",
                    f"startup parameter {name!r} is not allowed",
                    "options, replication and unknown startup parameters are refused; "
                    "set session parameters with SET after connecting",
                )
            if key == "client_encoding" and value.upper().replace("-", "") not in (
                "UTF8",
                "UNICODE",
            ):
                raise GatewayError(
                    "22023",
                    f"client_encoding {value!r} is not allowed",
                    "dbaccess sessions use UTF8",
                )
            if key == "search_path":
                try:
                    parse_search_path(value)
                except ValueError as exc:
                    # The analysis must read it as the server will.
                    raise GatewayError(
                        "22023",
                        f"invalid value for startup parameter search_path: {exc}",
                        "give a comma-separated list of schema names",
                    ) from None
            params[key] = value
        if "user" not in params:
            raise GatewayError("28000", "no user name in the startup packet")
        return params


def startup_packet(params: dict[str, str]) -> bytes:
    return pgwire.StartupMessage(params).encode()


def _password_message(body: bytes) -> bytes:
    return pgwire.encode_raw(ord("p"), body)


class UpstreamPhase(Enum):
    AUTH = "auth"
    PARAMS = "params"
    READY = "ready"


@dataclass
class UpstreamLogin:
    """SCRAM-SHA-256 client and startup collector for the upstream connection."""

    user: str
    password: str = field(repr=False)
    phase: UpstreamPhase = UpstreamPhase.AUTH
    parameters: list[tuple[str, str]] = field(default_factory=list)
    backend_key: tuple[int, int] | None = None
    # Set by the shell only after a verify-ca/verify-full handshake: then, and only
    # then, the password may cross as cleartext inside TLS.
    tls_verified: bool = False
    _scram: ScramClient | None = field(default=None, repr=False)

    def handle(self, raw: RawMessage) -> bytes:
        """Feed one upstream message; returns bytes to send upstream."""
        try:
            return self._handle(raw)
        except (ValueError, struct.error) as exc:
            # Bad UTF-8, a missing NUL, a SCRAM exchange out of order: all mean
            # the target (or something posing as it) does not speak the protocol.
            raise GatewayError(
                "08P01", f"malformed message from the target during login: {exc}"
            ) from None

    def _handle(self, raw: RawMessage) -> bytes:
        t = raw.type
        if t == ord("E"):
            error = pgwire.decode_backend(raw)
            assert isinstance(error, pgwire.ErrorResponse)
            fields = error.fields
            raise GatewayError(
                "08006" if self.phase is UpstreamPhase.AUTH else fields.get("C", "08006"),
                "the target database refused the session login: "
                + fields.get("M", "unknown error"),
                "the session's credential may have been revoked or expired; start a new session",
            )
        if self.phase is UpstreamPhase.AUTH:
            if t != ord("R") or len(raw.body) < 4:
                raise GatewayError("08P01", "unexpected message from the target during login")
            (code,) = struct.unpack_from("!I", raw.body)
            data = raw.body[4:]
            if code == 0:  # AuthenticationOk
                if self._scram is not None and not self._scram.verified:
                    # Something posing as the target, which cannot sign: it does not
                    # know the role's verifier.
                    raise GatewayError(
                        "28000", "the target ended the SCRAM login without its signature"
                    )
                self.phase = UpstreamPhase.PARAMS
                return b""
            if code == 10:  # AuthenticationSASL
                mechs = [m for m in data.split(b"\0") if m]
                if b"SCRAM-SHA-256" not in mechs:
                    raise GatewayError("28000", "the target offers no SCRAM-SHA-256 login")
                self._scram = ScramClient(self.password, self.user)
                first = self._scram.first().encode()
                body = b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first
                return _password_message(body)
            if code == 11:  # SASLContinue
                if self._scram is None:
                    raise GatewayError("08P01", "SASL continue without a SASL start")
                return _password_message(self._scram.final(data.decode()).encode())
            if code == 12:  # SASLFinal
                if self._scram is None:
                    raise GatewayError("08P01", "SASL final without a SASL start")
                try:
                    self._scram.verify(data.decode())
                except ValueError:  # a ScramError, or not even UTF-8
                    raise GatewayError(
                        "28000", "the target's SCRAM signature did not verify"
                    ) from None
                return b""
            if code == 3:  # AuthenticationCleartextPassword
                if not self.tls_verified:
                    raise GatewayError(
                        "28000",
                        "the target asked for a cleartext password",
                        "configure scram-sha-256 for session roles on the target, "
                        "or connect to it with sslmode verify-full",
                    )
                return _password_message(self.password.encode() + b"\0")
            raise GatewayError("28000", f"unsupported authentication method {code} on the target")
        if self.phase is UpstreamPhase.PARAMS:
            if t == ord("S"):
                name, value, _ = raw.body.split(b"\0", 2)
                self.parameters.append((name.decode(), value.decode()))
            elif t == ord("K"):
                if len(raw.body) != 8:
                    raise ProtocolViolation("malformed BackendKeyData")
                self.backend_key = struct.unpack("!II", raw.body)
            elif t == ord("Z"):
                self.phase = UpstreamPhase.READY
            elif t == ord("N"):
                pass  # notices during startup are not worth a round trip to the client
            else:
                raise GatewayError(
                    "08P01", f"unexpected message {chr(t)!r} during upstream startup"
                )
            return b""
        raise ProtocolViolation("upstream login already finished")
