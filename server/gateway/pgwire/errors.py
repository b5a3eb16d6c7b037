"""The one error the wire-protocol codec raises.

Every way a byte stream or a message body can be wrong (bad length word,
unknown startup code, body that disagrees with its own counts, invalid UTF-8,
unknown message type at decode time) surfaces as :class:`ProtocolViolation`.
It is a :class:`~server.errors.DbaccessError`, so the gateway turns it into a
PostgreSQL ErrorResponse with SQLSTATE 08P01 (protocol_violation) like any
other broker error, and the fuzz tests can assert that nothing else escapes.
"""

from __future__ import annotations

from server.errors import DbaccessError


class ProtocolViolation(DbaccessError):
    """Bytes that do not follow the PostgreSQL v3 protocol; the connection cannot go on."""

    kind = "protocol_violation"
    http_status = 400
    sqlstate = "08P01"
