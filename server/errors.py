"""The few error kinds of the broker, and how each one looks at a boundary.

Code inside the server raises one of these; the API layer turns them into an
HTTP status with a JSON body (``{"error": kind, "message": ..., "hint": ...}``),
the gateway into a PostgreSQL ErrorResponse with the SQLSTATE, and the CLI into
one of its documented exit codes.  Anything else that escapes is a bug and is
reported as ``internal``.
"""

from __future__ import annotations


class DbaccessError(Exception):
    """Base class: a message for humans, an optional hint, and the boundary mappings."""

    kind = "error"
    http_status = 500
    sqlstate = "XX000"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_json(self) -> dict[str, str | None]:
        return {"error": self.kind, "message": self.message, "hint": self.hint}


class InvalidInput(DbaccessError):
    """The caller sent something malformed: a bad policy file, a bad TTL, bad JSON."""

    kind = "invalid"
    http_status = 400
    sqlstate = "22023"


class NotAuthenticated(DbaccessError):
    """No credential, or one that is unknown, expired or revoked."""

    kind = "not_authenticated"
    http_status = 401
    sqlstate = "28P01"


class Forbidden(DbaccessError):
    """The identity is known but policy does not allow this."""

    kind = "forbidden"
    http_status = 403
    sqlstate = "42501"


class ApprovalRequired(Forbidden):
    """Policy allows this only with approval; ``request_id`` names the request that waits for it."""

    kind = "approval_required"

    def __init__(self, message: str, *, request_id: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.request_id = request_id

    def to_json(self) -> dict[str, str | None]:
        return {**super().to_json(), "request_id": self.request_id}


class NotFound(DbaccessError):
    """An unknown target, scope, session or request."""

    kind = "not_found"
    http_status = 404
    sqlstate = "3D000"


class Conflict(DbaccessError):
    """The thing exists but is in the wrong state (an ended session, a used approval)."""

    kind = "conflict"
    http_status = 409
    sqlstate = "55000"


class TooManyConnections(Conflict):
    """A connection over one of the caps on connections (PostgreSQL's own SQLSTATE);
    ``limit`` names the setting or policy key, ``value`` its number."""

    sqlstate = "53300"

    def __init__(self, message: str, *, limit: str, value: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.limit = limit
        self.value = value


class Unavailable(DbaccessError):
    """A dependency (target database, Vault, store) could not be reached."""

    kind = "unavailable"
    http_status = 503
    sqlstate = "08006"
