"""Messages that tell the user what to do, from the real CLI against a real broker:
the scope that allows a refused write, how to give a missing reason, who can
approve while the CLI waits and the command they run, a statement review as its
approvers see it, times as durations or ISO, and every broker refusal as one
line with its documented exit code (no doubled prefix, no validation dump)."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator

import pytest

from brokercli.errors import CliError
from brokercli.exit_codes import ExitCode
from server.demo.provision import DemoTarget
from tests.fix_broker import Broker, demo_policy, running_broker

pytestmark = pytest.mark.slow

SCOPES = """\
      gated:
        grants: [demo_read]
        default_ttl: 15m
        max_ttl: 1h
        allow: {groups: [dev]}
        approval:
          approvers: {groups: [dba]}
      noted:
        grants: [demo_read]
        default_ttl: 15m
        max_ttl: 1h
        allow: {groups: [dev]}
        reason_required: true
"""
REQ = re.compile(r"\b(r-[0-9a-f]+)\b")


@pytest.fixture(scope="module")
def messages_broker(demo_target: DemoTarget) -> Iterator[Broker]:
    with running_broker(demo_target, demo_policy(scopes=SCOPES)) as b:
        yield b


def _person(broker: Broker, *groups: str) -> str:
    """A token for a person of the test's own, so no two tests share pending requests."""
    return broker.token(f"user-{secrets.token_hex(3)}", *groups)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("dbaccess: ")]


def test_a_write_in_the_read_scope_names_the_scope_that_allows_it(
    messages_broker: Broker,
) -> None:
    res = messages_broker.cli(
        "exec", "demo", "--scope", "read", "-c", "UPDATE customers SET city = 'x' WHERE id = 1",
        token=_person(messages_broker, "dev"),
    )  # fmt: skip
    assert res.returncode == ExitCode.SQL_ERROR, res.stderr
    assert _error_lines(res.stderr) == [
        "dbaccess: error: UPDATE is a write, which this scope does not allow "
        "(guardrails.block_write) [42501]"
    ], res.stderr
    assert "hint: run it in a scope that allows writes: --scope write" in res.stderr


def test_psql_gets_the_same_hint(messages_broker: Broker) -> None:
    from tests.fix_session import held_session

    with held_session(messages_broker, "--scope", "read") as s:
        res = s.psql("DELETE FROM customers WHERE id = 1")
    assert res.returncode != 0
    assert "ERROR:  dbaccess: DELETE is a write" in res.stderr, res.stderr
    assert "HINT:  run it in a scope that allows writes: --scope write" in res.stderr


def test_a_missing_reason_says_how_to_give_one(messages_broker: Broker) -> None:
    res = messages_broker.cli(
        "exec", "demo", "--scope", "noted", "-c", "select 1", token=_person(messages_broker, "dev")
    )
    assert res.returncode == ExitCode.FORBIDDEN, res.stderr
    assert _error_lines(res.stderr) == [
        "dbaccess: error: scope 'noted' of target 'demo' requires a reason (ticket, incident)"
    ]
    assert 'hint: add --reason "…"' in res.stderr
    ok = messages_broker.cli(
        "exec", "demo", "--scope", "noted", "-c", "select 1", "--reason", "INC-7",
        token=_person(messages_broker, "dev"),
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr


def test_waiting_for_approval_names_the_approvers_and_their_command(
    messages_broker: Broker,
) -> None:
    person = _person(messages_broker, "dev")
    res = messages_broker.cli(
        "exec", "demo", "--scope", "gated", "-c", "select 1", "--wait-timeout", "2s",
        token=person,
    )  # fmt: skip
    assert res.returncode == ExitCode.WAIT_TIMEOUT, res.stderr
    request_id = REQ.search(res.stderr).group(1)  # type: ignore[union-attr]
    assert f"waiting for approval of request {request_id} by group dba" in res.stderr
    assert f"an approver runs: dbaccess approve {request_id}" in res.stderr
    assert "dbaccess: dbaccess:" not in res.stderr
    # Without waiting, the same request and the same command to pass on.
    again = messages_broker.cli(
        "exec", "demo", "--scope", "gated", "-c", "select 1", "--no-wait", token=person
    )
    assert again.returncode == ExitCode.PENDING, again.stderr
    assert again.stdout.strip() == request_id
    assert f"hint: an approver runs: dbaccess approve {request_id}" in again.stderr


def test_a_statement_review_is_shown_to_its_approvers(messages_broker: Broker) -> None:
    ci = _person(messages_broker, "dev")
    reviewer = _person(messages_broker, "dev")
    table = f"msg_e2e_{secrets.token_hex(3)}"
    statement = f"CREATE TABLE {table} (a int)"
    held = messages_broker.cli("exec", "demo", "--scope", "write", "-c", statement, token=ci)
    assert held.returncode == ExitCode.SQL_ERROR, held.stderr
    assert "held for review" in held.stderr
    request_id = REQ.search(held.stderr).group(1)  # type: ignore[union-attr]
    shown = messages_broker.cli("requests", "-o", "json", token=reviewer)
    assert shown.returncode == 0, shown.stderr
    review = next(r for r in json.loads(shown.stdout) if r["id"] == request_id)
    sha = review["statement_sha256"]

    listed = messages_broker.cli("requests", "--to-review", "-o", "csv", token=reviewer)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(request_id))
    assert f"statement {statement} sha256 {sha[:16]}" in row, listed.stdout

    # Without a terminal approve refuses to go on, after showing what would be approved.
    asked = messages_broker.cli("approve", request_id, token=reviewer)
    assert asked.returncode == ExitCode.USAGE
    assert f"statement (sha256 {sha}):" in asked.stderr and statement in asked.stderr
    assert "approvers:  group dev" in asked.stderr
    messages_broker.cli("cancel", request_id, token=ci)


@pytest.mark.parametrize("since", ["1h", "7d", "30m", "2020-01-31T00:00", "2020-01-31T00:00Z"])
def test_audit_since_takes_a_duration_or_an_iso_time(messages_broker: Broker, since: str) -> None:
    admin = messages_broker.token("root", "admin")
    res = messages_broker.cli("audit", "--since", since, "-o", "json", token=admin)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout), "the broker's own events are recent"


def test_the_audit_table_shows_details_as_pairs(messages_broker: Broker) -> None:
    admin = messages_broker.token("root", "admin")
    res = messages_broker.cli("audit", "--since", "1h", "-o", "csv", token=admin)
    assert res.returncode == 0, res.stderr
    assert "=" in res.stdout and "{" not in res.stdout, res.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("audit", "--since", "someday"),
            "dbaccess: error: --since: 'someday' is not a time: give a duration (1h, 7d) "
            "or an ISO 8601 time",
        ),
        (("audit", "--since", "1.5h"), "dbaccess: error: --since: '1.5h' is not a duration"),
        (
            ("request", "demo", "--scope", "gated", "--reason", "x", "--start-at", "soon"),
            "dbaccess: error: --start-at: 'soon' is not a time: give a duration (30m, 2h)",
        ),
    ],
)
def test_a_bad_time_is_one_clear_line(
    messages_broker: Broker, args: tuple[str, ...], message: str
) -> None:
    res = messages_broker.cli(*args, token=messages_broker.token("root", "admin", "dev"))
    assert res.returncode == ExitCode.USAGE, res.stderr
    lines = _error_lines(res.stderr)
    assert len(lines) == 1 and lines[0].startswith(message), res.stderr


@pytest.mark.parametrize(
    ("method", "path", "body", "message"),
    [
        ("GET", "/v1/audit?since=someday", None, "since: 'someday' is not a time"),
        ("GET", "/v1/audit?since=2h", None, None),
        ("GET", "/v1/audit?limit=many", None, "invalid request: limit: Input should be"),
        ("POST", "/v1/sessions", {"scope": "read"}, "invalid request: target: Field required"),
        (
            "POST",
            "/v1/requests",
            {"target": "demo", "scope": "gated", "reason": "x", "start_at": "later"},
            "start_at: 'later' is not a time",
        ),
    ],
)
def test_the_api_refuses_bad_input_as_one_line(
    messages_broker: Broker, method: str, path: str, body: object, message: str | None
) -> None:
    client = messages_broker.client(messages_broker.token("root", "admin", "dev"))
    try:
        if message is None:
            assert client.request(method, path, json=body) is not None
            return
        with pytest.raises(CliError) as caught:
            client.request(method, path, json=body)
    finally:
        client.close()
    err = caught.value
    assert err.code == ExitCode.USAGE
    assert err.details.get("error") == "invalid"
    assert err.message.startswith(message), err.message
    assert "\n" not in err.message and "{" not in err.message
