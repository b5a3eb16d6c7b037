"""Exit codes of the dbaccess CLI: stable, documented, one per kind of outcome.

`dbaccess run` and `dbaccess connect` exit with the child's (psql's) own status
once the child has started; these codes are what dbaccess itself returns.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # unexpected failure (a bug, or an error without a better code)
    USAGE = 2  # bad command line or input rejected by the broker as invalid
    SQL_ERROR = 3  # the database (or the gateway) answered a statement with an error
    NOT_AUTHENTICATED = 4  # no broker token, or an expired/revoked one: run dbaccess login
    FORBIDDEN = 5  # policy does not allow this identity/target/scope/TTL
    NOT_FOUND = 6  # unknown target, scope or session
    UNAVAILABLE = 7  # broker, gateway or database could not be reached
    CONFLICT = 8  # the thing is in the wrong state (e.g. the session already ended)
    PENDING = 9  # the scope needs approval and the request waits for it (--no-wait)
    APPROVAL_DENIED = 10  # the access request was denied, cancelled or revoked
    APPROVAL_EXPIRED = 11  # the access request, or its approved grant, expired
    WAIT_TIMEOUT = 12  # no decision within --wait-timeout (the request stays pending)
    # As a shell reports a command it cannot start (dbaccess run/connect).
    CANNOT_EXECUTE = 126  # the command exists but is not executable
    COMMAND_NOT_FOUND = 127  # no such command
    INTERRUPTED = 130  # stopped with Ctrl-C


DESCRIPTIONS: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.ERROR: "unexpected error",
    ExitCode.USAGE: "bad command line or invalid input",
    ExitCode.SQL_ERROR: "the database returned an error for a statement",
    ExitCode.NOT_AUTHENTICATED: "not logged in, or the broker token expired or was revoked",
    ExitCode.FORBIDDEN: "policy denied the request",
    ExitCode.NOT_FOUND: "unknown target, scope or session",
    ExitCode.UNAVAILABLE: "broker, gateway or database unreachable",
    ExitCode.CONFLICT: "wrong state, e.g. the session already ended",
    ExitCode.PENDING: "approval pending: the access request waits for approvers",
    ExitCode.APPROVAL_DENIED: "the access request was denied, cancelled or revoked",
    ExitCode.APPROVAL_EXPIRED: "the access request or its approval expired",
    ExitCode.WAIT_TIMEOUT: "gave up waiting for approval (--wait-timeout)",
    ExitCode.CANNOT_EXECUTE: "run: the command is not executable",
    ExitCode.COMMAND_NOT_FOUND: "run: command not found",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}

# How the broker's JSON error kinds map to exit codes (see server/errors.py).
BY_ERROR_KIND: dict[str, ExitCode] = {
    "invalid": ExitCode.USAGE,
    "not_authenticated": ExitCode.NOT_AUTHENTICATED,
    "forbidden": ExitCode.FORBIDDEN,
    "approval_required": ExitCode.PENDING,
    "not_found": ExitCode.NOT_FOUND,
    "conflict": ExitCode.CONFLICT,
    "unavailable": ExitCode.UNAVAILABLE,
}

# When an error body names no kind (not the broker's own, e.g. a proxy in front of it).
BY_STATUS: dict[int, ExitCode] = {
    400: ExitCode.USAGE,
    401: ExitCode.NOT_AUTHENTICATED,
    403: ExitCode.FORBIDDEN,
    404: ExitCode.NOT_FOUND,
    409: ExitCode.CONFLICT,
    413: ExitCode.USAGE,
    422: ExitCode.USAGE,
    429: ExitCode.UNAVAILABLE,
}


def epilog() -> str:
    lines = ["\b", "Exit codes:"]
    lines += [f"  {int(code):>3}  {DESCRIPTIONS[code]}" for code in ExitCode]
    return "\n".join(lines)
