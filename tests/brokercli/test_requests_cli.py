"""The request commands without a broker: usage errors, help, and documented exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from brokercli.app import main
from brokercli.exit_codes import BY_ERROR_KIND, DESCRIPTIONS, ExitCode

CLI_DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


@pytest.mark.parametrize(
    "argv",
    [
        ["request", "demo"],  # no --scope, no --reason
        ["request", "demo", "--scope", "write"],  # no --reason
        ["request", "demo", "--scope", "write", "--reason", "x", "--start-at", "tomorrow"],
        ["approve"],
        ["deny", "r-0123456789ab"],  # a denial needs a reason
        ["cancel"],
        ["requests", "--output", "yaml"],
        ["exec", "demo", "-c", "select 1", "--wait-timeout", "soon"],
        ["exec", "demo", "-c", "select 1", "--wait-timeout", "15"],
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DBACCESS_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("DBACCESS_TOKEN", "dba_x")
    monkeypatch.setenv("DBACCESS_SERVER", "http://127.0.0.1:9")
    assert main(argv) == ExitCode.USAGE


def test_help_lists_the_request_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("request ", "requests", "approve", "deny", "cancel"):
        assert command in out
    assert main(["exec", "--help"]) == 0
    exec_help = capsys.readouterr().out
    for option in ("--no-wait", "--wait-timeout", "--break-glass"):
        assert option in exec_help


@pytest.mark.parametrize("code", list(ExitCode))
def test_every_exit_code_is_described_and_in_the_cli_reference(code: ExitCode) -> None:
    assert DESCRIPTIONS[code]
    assert f"\n| {int(code)} | " in CLI_DOC.read_text()


def test_approval_required_means_pending() -> None:
    assert BY_ERROR_KIND["approval_required"] is ExitCode.PENDING
    assert len({int(c) for c in ExitCode}) == len(ExitCode)


def test_a_reviewer_sees_every_character_of_a_statement_and_reason() -> None:
    # ESC sequences would erase or overwrite lines on the reviewer's terminal,
    # bidi controls reorder them: the statement shown is the one that runs.
    from brokercli.commands.requests import _describe, asked_for

    r = {
        "id": "r-1", "kind": "statement", "status": "pending", "requester": "bot",
        "target": "demo", "scope": "write", "reason": "tidy\x1b[2K", "ttl": "15m",
        "single_use": True, "created_at": "2026-01-01T00:00:00",
        "expires_at": "2026-01-01T01:00:00",
        "approvals": [], "approvals_count": 0, "min_approvals": 1, "approver_groups": ["dba"],
        "named_approvers": 0, "statement_sha256": "ab" * 32,
        "statement": "delete from t /*\x1b[2K\x1b[0Gselect 1*/ where id = 1 or\u200b\u202etrue",
    }  # fmt: skip
    for shown in (_describe(r), asked_for(r)):
        assert "\x1b" not in shown and "\u202e" not in shown and "\u200b" not in shown
        assert "[U+001B]" in shown
    assert "[U+202E]" in _describe(r) and "tidy[U+001B][2K" in _describe(r)
