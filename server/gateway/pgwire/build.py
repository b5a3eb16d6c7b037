"""Ready-made wire bytes for the messages the gateway itself sends most.

The gateway answers clients on its own (authentication, refusals, the status
of a pinned session), so these return finished bytes rather than dataclasses.
Fixed messages are encoded once at import time; the rest go through the
typed encoders, so they share their checks (no NUL inside strings, valid
transaction status) and stay byte-identical to ``encode(...)``.

Error and notice fields are written in the order PostgreSQL itself uses
(S, V, C, M, D, H), with S and V both carrying the unlocalized severity.
"""

from __future__ import annotations

import re
from typing import Final

from server.gateway.pgwire.framing import PROTOCOL_3_0
from server.gateway.pgwire.messages import (
    AuthenticationCleartextPassword,
    AuthenticationOk,
    BackendKeyData,
    ErrorResponse,
    NegotiateProtocolVersion,
    NoticeResponse,
    ParameterStatus,
    ReadyForQuery,
)

ERROR_SEVERITIES: Final = frozenset({"ERROR", "FATAL", "PANIC"})
NOTICE_SEVERITIES: Final = frozenset({"WARNING", "NOTICE", "DEBUG", "INFO", "LOG"})

# One-byte answers to SSLRequest / GSSENCRequest.
SSL_ACCEPTED: Final = b"S"
GSSENC_ACCEPTED: Final = b"G"
ENCRYPTION_REFUSED: Final = b"N"

_SQLSTATE = re.compile(r"[0-9A-Z]{5}")
_AUTH_OK: Final = AuthenticationOk().encode()
_AUTH_CLEARTEXT: Final = AuthenticationCleartextPassword().encode()
_READY: Final = {status: ReadyForQuery(status).encode() for status in ("I", "T", "E")}


def _report_fields(
    severity: str,
    allowed: frozenset[str],
    sqlstate: str,
    message: str,
    hint: str | None,
    detail: str | None,
) -> dict[str, str]:
    if severity not in allowed:
        raise ValueError(f"severity must be one of {sorted(allowed)}, not {severity!r}")
    if not _SQLSTATE.fullmatch(sqlstate):
        raise ValueError(f"SQLSTATE must be five digits or capital letters, not {sqlstate!r}")
    fields = {"S": severity, "V": severity, "C": sqlstate, "M": message}
    if detail is not None:
        fields["D"] = detail
    if hint is not None:
        fields["H"] = hint
    return fields


def error_response(
    severity: str,
    sqlstate: str,
    message: str,
    hint: str | None = None,
    detail: str | None = None,
) -> bytes:
    """An ErrorResponse; severity is ERROR, FATAL or PANIC."""
    fields = _report_fields(severity, ERROR_SEVERITIES, sqlstate, message, hint, detail)
    return ErrorResponse(fields).encode()


def notice_response(
    severity: str,
    sqlstate: str,
    message: str,
    hint: str | None = None,
    detail: str | None = None,
) -> bytes:
    """A NoticeResponse; severity is WARNING, NOTICE, DEBUG, INFO or LOG."""
    fields = _report_fields(severity, NOTICE_SEVERITIES, sqlstate, message, hint, detail)
    return NoticeResponse(fields).encode()


def ready_for_query(status: str) -> bytes:
    """ReadyForQuery with transaction status 'I' (idle), 'T' (in block) or 'E' (failed)."""
    try:
        return _READY[status]
    except KeyError:
        raise ValueError(f"transaction status must be 'I', 'T' or 'E', not {status!r}") from None


def auth_ok() -> bytes:
    return _AUTH_OK


def auth_cleartext_request() -> bytes:
    return _AUTH_CLEARTEXT


def parameter_status(name: str, value: str) -> bytes:
    return ParameterStatus(name, value).encode()


def backend_key_data(pid: int, secret: int) -> bytes:
    return BackendKeyData(pid, secret).encode()


def negotiate_protocol_version(
    unrecognized: list[str] | None = None, newest_version: int = PROTOCOL_3_0
) -> bytes:
    """Tell a client asking for a newer 3.x (or for ``_pq_.`` options) what is supported.

    The version is the whole code (3.0 is 196608), as PostgreSQL sends it.
    """
    return NegotiateProtocolVersion(newest_version, list(unrecognized or [])).encode()
