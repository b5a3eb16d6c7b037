"""The ``limits`` section of targets and scopes: merged key by key over the scope's
defaults, and every mistake reported with file, line and key."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from server.policy import PolicyError, parse_policy
from server.policy.model import READ_LIMITS, WRITE_LIMITS, default_limits

BIN = Path(sys.executable).parent

POLICY = textwrap.dedent(
    """\
    version: 1
    targets:
      demo:
        database: demo
        admin_dsn_env: DEMO_ADMIN_DSN
        limits:
          statement_timeout: 2m
          temp_file_limit: 512MB
          max_connections_per_identity: 4
        scopes:
          read:
            grants: [demo_read]
            max_ttl: 8h
            allow:
              groups: [dev]
            limits:
              lock_timeout: off
              idle_session_timeout: 0
              max_result_rows: off
              max_result_bytes: 64MB
              max_connections_per_identity: auto
              max_connections_per_target: 30
              advisory_locks: true
          write:
            grants: [demo_write]
            max_ttl: 1h
            allow:
              groups: [dev]
          plain:
            grants: [demo_read]
            max_ttl: 1h
            allow:
              groups: [dev]
    """
)


def test_target_limits_are_defaults_and_scopes_override_key_by_key() -> None:
    policy = parse_policy(POLICY, "policy.yaml", base_dir=Path("/etc"))
    scopes = policy.targets["demo"].scopes
    read = scopes["read"].effective_limits
    assert read.statement_timeout == timedelta(minutes=2)  # the target's
    assert read.lock_timeout == timedelta(0)  # off at the scope
    assert read.idle_session_timeout == timedelta(0)
    assert (
        read.idle_in_transaction_session_timeout == READ_LIMITS.idle_in_transaction_session_timeout
    )
    assert read.temp_file_limit == 512 << 20
    assert read.max_result_rows is None and read.max_result_bytes == 64 << 20
    assert read.max_connections_per_identity is None  # auto at the scope beats the target's 4
    assert read.max_connections_per_target == 30
    assert read.advisory_locks is True
    write = scopes["write"].effective_limits
    assert write.statement_timeout == timedelta(minutes=2)
    assert write.lock_timeout == WRITE_LIMITS.lock_timeout  # write's default, not read's
    assert write.max_connections_per_identity == 4
    assert write.advisory_locks is False


def test_without_any_section_the_scope_defaults_apply() -> None:
    section = (
        "    limits:\n      statement_timeout: 2m\n      temp_file_limit: 512MB\n"
        "      max_connections_per_identity: 4\n"
    )
    assert section in POLICY
    policy = parse_policy(POLICY.replace(section, "", 1), "policy.yaml", base_dir=Path("/etc"))
    scopes = policy.targets["demo"].scopes
    assert scopes["write"].limits is None
    assert scopes["write"].effective_limits == WRITE_LIMITS
    assert scopes["plain"].effective_limits == default_limits("plain") == WRITE_LIMITS
    assert scopes["read"].effective_limits.statement_timeout == READ_LIMITS.statement_timeout


def _with_scope_limits(*lines: str) -> str:
    body = "".join(f"          {line}\n" for line in lines)
    return POLICY.replace(
        "      write:\n        grants: [demo_write]\n",
        "      write:\n        grants: [demo_write]\n        limits:\n" + body,
        1,
    )


LINE = 27  # the first key of the write scope's limits section


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "statement_timout: 5m",
            "statement_timout: unknown key (did you mean 'statement_timeout'?)",
        ),
        ("lock_timeout: -5s", "lock_timeout: '-5s' is negative"),
        ("lock_timeout: 30", "lock_timeout: '30' is not a duration: add a unit"),
        ("lock_timeout: 1.5s", "lock_timeout: '1.5s' is not a duration: use whole numbers"),
        ("statement_timeout: 30d", "longer than PostgreSQL's longest timeout"),
        ("statement_timeout: forever", "statement_timeout: 'forever' is not a duration"),
        ("temp_file_limit: 1024", "temp_file_limit: '1024' has no unit"),
        ("temp_file_limit: 1.5GB", "temp_file_limit: '1.5GB' is not a size"),
        ("temp_file_limit: -1GB", "temp_file_limit: '-1GB' is negative"),
        ("temp_file_limit: 100B", "is not a whole number of kB"),
        ("max_result_bytes: [1]", "max_result_bytes: expected a single value, got a list"),
        ("max_result_bytes: 0", "max_result_bytes: '0' would refuse every result"),
        ("max_result_rows: 0", "max_result_rows: '0' is not a whole number of rows from 1"),
        ("max_result_rows: -10", "max_result_rows: '-10' is negative"),
        ("max_result_rows: many", "max_result_rows: 'many' is not a whole number of rows"),
        ("max_connections_per_session: 0", "'0' is not a whole number of connections from 1"),
        ("max_connections_per_session: auto", "'auto' is not a whole number of connections"),
        ("max_connections_per_identity: -1", "max_connections_per_identity: '-1' is negative"),
        ("max_connections_per_target: lots", "'lots' is not a whole number of connections (or"),
        ("advisory_locks: yes", "advisory_locks: 'yes' is not true or false"),
        ("advisory_locks:", "advisory_locks: a value is required here"),
    ],
)
def test_mistakes_name_file_line_and_key(line: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(_with_scope_limits(line), "policy.yaml", base_dir=Path("/etc"))
    problems = [str(p) for p in info.value.problems]
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"policy.yaml:{LINE}: targets.demo.scopes.write.limits."), (
        problems
    )
    assert message in problems[0]


def test_every_mistake_at_once_and_a_section_of_the_wrong_type() -> None:
    text = _with_scope_limits("idle_session_timeout: 5", "max_result_rows: -1").replace(
        "      max_connections_per_identity: 4\n",
        "      max_connections_per_identity: 4\n      lock_timeout: soon\n",
        1,
    )
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "policy.yaml", base_dir=Path("/etc"))
    problems = [str(p) for p in info.value.problems]
    assert len(problems) == 3, problems
    assert problems[0].startswith("policy.yaml:10: targets.demo.limits.lock_timeout:")
    section = (
        "    limits:\n      statement_timeout: 2m\n      temp_file_limit: 512MB\n"
        "      max_connections_per_identity: 4\n"
    )
    assert section in POLICY
    with pytest.raises(PolicyError) as info:
        parse_policy(
            POLICY.replace(section, "    limits: 5m\n", 1), "policy.yaml", base_dir=Path("/etc")
        )
    assert [str(p) for p in info.value.problems] == [
        "policy.yaml:6: targets.demo.limits: expected a mapping, got '5m'"
    ]


def test_policy_check_and_explain_show_the_effective_limits(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    server = str(BIN / "dbaccess-server")
    check = subprocess.run(
        [server, "policy", "check", str(path)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stderr
    out = check.stdout + check.stderr
    assert (
        "demo/read limits: statement_timeout=2m lock_timeout=off "
        "idle_in_transaction_session_timeout=1m idle_session_timeout=off temp_file_limit=512MB "
        "max_result_rows=off max_result_bytes=64MB max_connections_per_session=20 "
        "max_connections_per_identity=auto max_connections_per_target=30 advisory_locks=allowed"
    ) in out
    assert "demo/write limits: statement_timeout=2m lock_timeout=30s" in out
    assert "max_connections_per_identity=4 " in out
    who = ["--identity", "bob", "--groups", "dev", "--target", "demo", "--scope", "write"]
    explain = subprocess.run(
        [server, "policy", "explain", "-p", str(path), *who],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert explain.returncode == 0, explain.stderr
    assert "limits:   statement_timeout=2m lock_timeout=30s" in explain.stdout

    path.write_text(_with_scope_limits("statement_timeout: 5"))
    bad = subprocess.run(
        [server, "policy", "check", str(path)], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2
    assert f"{path}:{LINE}: targets.demo.scopes.write.limits.statement_timeout:" in (
        bad.stdout + bad.stderr
    )
