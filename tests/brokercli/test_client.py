"""How the client turns a broker error answer into one line and an exit code, whatever
came back: the broker's own body, FastAPI's validation list, or a proxy's page."""

from __future__ import annotations

from typing import Any

import pytest

from brokercli.client import BrokerClient
from brokercli.errors import CliError
from brokercli.exit_codes import ExitCode

VALIDATION = {
    "detail": [
        {"type": "missing", "loc": ["body", "target"], "msg": "Field required", "input": {}},
        {"type": "int_parsing", "loc": ["query", "limit"], "msg": "Input should be a valid int"},
    ]
}


@pytest.mark.parametrize(
    ("status", "body", "raw", "message", "code"),
    [
        (
            403,
            {"error": "forbidden", "message": "no", "hint": "rule: x"},
            b"",
            "no",
            ExitCode.FORBIDDEN,
        ),
        (
            404,
            {"error": "not_found", "message": "dbaccess: unknown session 's-1'"},
            b"",
            "unknown session 's-1'",
            ExitCode.NOT_FOUND,
        ),
        (
            422,
            VALIDATION,
            b"",
            "invalid request: target: Field required; limit: Input should be a valid int",
            ExitCode.USAGE,
        ),
        (404, {"detail": "Not Found"}, b"", "Not Found", ExitCode.NOT_FOUND),
        (401, None, b"<html>\n<h1>nope</h1></html>", "the broker answered 401 Unauthorized",
         ExitCode.NOT_AUTHENTICATED),
        (409, {"error": "conflict", "message": "two\n  lines"}, b"", "two lines",
         ExitCode.CONFLICT),
        (418, None, b"teapot", "the broker answered 418 I'm a teapot", ExitCode.ERROR),
        (502, None, b"<html>bad gateway</html>", "the broker answered 502 Bad Gateway",
         ExitCode.UNAVAILABLE),
    ],
)  # fmt: skip
def test_an_error_answer_is_one_line_with_its_exit_code(
    status: int, body: Any, raw: bytes, message: str, code: ExitCode
) -> None:
    reason = {401: "Unauthorized", 418: "I'm a teapot", 502: "Bad Gateway"}.get(status, "")
    with pytest.raises(CliError) as caught:
        BrokerClient._raise(status, reason, body, raw)
    assert (caught.value.message, caught.value.code) == (message, code)


@pytest.mark.parametrize(
    ("message", "hint", "shown", "shown_hint"),
    [
        ("dbaccess: dbaccess: blocked", "hint: do x", "blocked", "do x"),
        ("dbaccess: error: cannot", None, "cannot", None),
        ("the dbaccess: label inside stays", "hint inside: stays", None, None),
    ],
)
def test_a_message_carries_the_dbaccess_prefix_at_most_once(
    message: str, hint: str | None, shown: str | None, shown_hint: str | None
) -> None:
    err = CliError(message, hint=hint)
    assert err.message == (shown or message)
    assert err.hint == (shown_hint or hint)
