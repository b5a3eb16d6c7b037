"""The CLI in scripts and CI, end to end against a real dev broker.

A CI job has no profile and no terminal: it names the broker with
DBACCESS_SERVER, authenticates with DBACCESS_TOKEN, trusts a private CA with
DBACCESS_CA_FILE (or --ca-file) and reads exit codes and plain output.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fix_broker import Broker

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ci_token(broker: Broker) -> str:
    return broker.token("ci-job", "dev")


def ci_env(broker: Broker, tmp_path: Path, token: str, **extra: str) -> dict[str, str]:
    """A CI job's environment: no profile (an empty config directory), a token and a URL."""
    config = tmp_path / "ci-config"
    config.mkdir(exist_ok=True)
    return {
        "DBACCESS_CONFIG_DIR": str(config),
        "DBACCESS_SERVER": broker.api_url,
        "DBACCESS_TOKEN": token,
        **extra,
    }


def test_a_private_ca_is_trusted_from_the_environment_or_the_flag(
    broker: Broker, ci_token: str, tmp_path: Path
) -> None:
    ca = str(broker.data_dir / "tls" / "ca.crt")
    env = ci_env(broker, tmp_path, ci_token)
    untrusted = broker.cli("whoami", env=env)
    assert untrusted.returncode == 7
    assert "does not verify" in untrusted.stderr and "DBACCESS_CA_FILE" in untrusted.stderr

    from_env = broker.cli("whoami", "-o", "json", env={**env, "DBACCESS_CA_FILE": ca})
    assert from_env.returncode == 0, from_env.stderr
    assert '"ci-job"' in from_env.stdout
    for argv in (["--ca-file", ca, "whoami"], ["whoami", "--ca-file", ca]):
        res = broker.cli(*argv, env=env)
        assert res.returncode == 0, res.stderr

    # The same CA verifies the gateway behind the session's tunnel.
    run = broker.cli(
        "exec", "demo", "-c", "select 1 as one", "-o", "csv", env={**env, "DBACCESS_CA_FILE": ca}
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["one", "1"]


def test_run_gives_the_child_the_session_but_no_broker_credential(
    broker: Broker, ci_token: str, tmp_path: Path
) -> None:
    ca = str(broker.data_dir / "tls" / "ca.crt")
    env = ci_env(
        broker,
        tmp_path,
        ci_token,
        DBACCESS_CA_FILE=ca,
        DBACCESS_SERVER_ARCHIVE_SECRET_ACCESS_KEY="archive-secret-xyz",
        DBACCESS_SOMETHING_NEW="unlisted-xyz",
        UNRELATED="kept",
    )
    res = broker.cli("run", "demo", "--", "env", env=env)
    assert res.returncode == 0, res.stderr
    child = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    assert ci_token not in res.stdout
    assert "archive-secret-xyz" not in res.stdout and "unlisted-xyz" not in res.stdout
    assert "DBACCESS_TOKEN" not in child
    assert {k for k in child if k.startswith("DBACCESS_")} == {
        "DBACCESS_SERVER",
        "DBACCESS_CA_FILE",
        "DBACCESS_CONFIG_DIR",
    }
    assert child["UNRELATED"] == "kept"
    assert child["PGHOST"] == "127.0.0.1" and child["PGDATABASE"] == "demo"
    assert child["PGUSER"] == "ci-job" and child["PGPASSWORD"]


def test_run_exits_like_a_shell_when_the_command_cannot_start(
    broker: Broker, tmp_path: Path
) -> None:
    def session_count() -> int:
        res = broker.cli("sessions", "-o", "json", "--limit", "1000")
        assert res.returncode == 0, res.stderr
        return len(json.loads(res.stdout))

    before = session_count()
    missing = broker.cli("run", "demo", "--", "no-such-command-xyz", "arg")
    assert missing.returncode == 127
    assert "command not found: no-such-command-xyz" in missing.stderr

    script = tmp_path / "migrate.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o644)
    not_executable = broker.cli("run", "demo", "--", str(script))
    assert not_executable.returncode == 126
    assert f"cannot execute {script}: permission denied" in not_executable.stderr
    assert "chmod +x" in not_executable.stderr
    directory = broker.cli("run", "demo", "--", str(tmp_path))
    assert directory.returncode == 126
    assert "is a directory" in directory.stderr
    # Refused before a session (and a database role) was created for nothing.
    assert session_count() == before


@pytest.mark.parametrize(
    "argv",
    [
        ["exec", "demo", "--scope", "nope", "-c", "select 1"],
        ["run", "demo", "--scope", "nope", "--", "true"],
        ["exec", "demo", "--scope", "nope", "--request-review", "-c", "create table t ()"],
        ["request", "demo", "--scope", "nope", "--reason", "r"],
        ["exec", "no-such-target", "-c", "select 1"],
    ],
)
def test_an_unknown_scope_or_target_exits_6(broker: Broker, argv: list[str]) -> None:
    res = broker.cli(*argv)
    assert res.returncode == 6, res.stderr
    assert "nope" in res.stderr or "no-such-target" in res.stderr


def read_until(proc: subprocess.Popen[str], done: Callable[[list[str]], bool]) -> list[str]:
    """Lines of ``proc``'s stdout until ``done`` says the output is complete."""
    assert proc.stdout is not None
    lines: list[str] = []
    while not done(lines):
        line = proc.stdout.readline()
        if not line:
            proc.wait(30)
            raise AssertionError(f"exited {proc.returncode}: {proc.stderr.read()}")  # type: ignore[union-attr]
        lines.append(line.rstrip("\n"))
    return lines


def psql(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", "-XAt", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


def session(broker: Broker, session_id: str) -> dict[str, object]:
    res = broker.cli("sessions", "-o", "json", "--limit", "1000")
    assert res.returncode == 0, res.stderr
    found: dict[str, object] = next(s for s in json.loads(res.stdout) if s["id"] == session_id)
    return found


def test_kill_ends_a_waiting_connect_which_exits_8_and_kill_again_exits_8(
    broker: Broker,
) -> None:
    proc = broker.spawn("connect", "demo", "--print-env", "--reason", "a GUI client")
    try:
        lines = read_until(proc, lambda got: len(got) == 7)
        assert lines[0].startswith("# session s-")
        session_id = lines[0].split()[2].rstrip(":")
        exports = dict(shlex.split(line)[1].split("=", 1) for line in lines[1:])
        assert set(exports) == {
            "PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSSLMODE"
        }  # fmt: skip
        used = psql(exports, "-c", "select current_database()")
        assert used.returncode == 0, used.stderr
        assert used.stdout.strip() == "demo"

        kill = broker.cli("kill", session_id)
        assert kill.returncode == 0, kill.stderr
        assert "credential revoked" in kill.stderr
        assert proc.wait(30) == 8
        stderr = proc.stderr.read()  # type: ignore[union-attr]
        assert f"session {session_id} has ended" in stderr
        assert "dbaccess connect demo" in stderr  # how to start a new one
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert psql(exports, "-c", "select 1").returncode != 0

    again = broker.cli("kill", session_id)
    assert again.returncode == 8
    assert f"session {session_id} has already ended" in again.stderr
    assert "client ended the session" in again.stderr


def _complete(fmt: str) -> Callable[[list[str]], bool]:
    if fmt == "uri":
        return lambda got: len(got) == 1
    if fmt == "pg_service":
        return lambda got: len(got) == 8
    return lambda got: bool(got) and got[-1] == "}"


@pytest.mark.parametrize("fmt", ["uri", "pg_service", "json"])
def test_connect_prints_the_tunnel_for_other_clients_and_holds_it_until_sigterm(
    broker: Broker, fmt: str, tmp_path: Path
) -> None:
    proc = broker.spawn("connect", "demo", "--format", fmt)
    try:
        lines = read_until(proc, _complete(fmt))
        if fmt == "uri":
            assert lines[0].startswith("postgresql://")
            used = psql({}, lines[0], "-c", "select current_database()")
        elif fmt == "pg_service":
            service = tmp_path / "pg_service.conf"
            service.write_text("\n".join(lines) + "\n")
            assert lines[1] == "[dbaccess-demo]"
            env = {"PGSERVICEFILE": str(service), "PGSERVICE": "dbaccess-demo"}
            used = psql(env, "-c", "select current_database()")
        else:
            data = json.loads("\n".join(lines))
            assert data["uri"].startswith("postgresql://") and data["target"] == "demo"
            conninfo = (
                f"host={data['host']} port={data['port']} user={data['user']} "
                f"password={data['password']} dbname={data['dbname']} sslmode={data['sslmode']}"
            )
            used = psql({}, conninfo, "-c", "select current_database()")
        assert used.returncode == 0, used.stderr
        assert used.stdout.strip() == "demo"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def test_sessions_without_a_terminal_print_whole_records_with_both_reasons(
    broker: Broker,
) -> None:
    reason = "INC-7 " + "weekly report for the finance team, " * 4
    ran = broker.cli("exec", "demo", "--reason", reason, "-c", "select 1")
    assert ran.returncode == 0, ran.stderr
    res = broker.cli("sessions", "--limit", "3")
    assert res.returncode == 0, res.stderr
    header, *rows = res.stdout.splitlines()
    assert header.split()[-4:] == ["ended", "reason", "end", "reason"]
    newest = json.loads(broker.cli("sessions", "-o", "json", "--limit", "1").stdout)[0]
    line = next(r for r in rows if r.startswith(newest["id"] + " "))
    # One line per record: the full id, the user's reason and the end reason, unfolded.
    assert reason.strip() in line
    assert line.rstrip().endswith("client ended the session")
    assert len(rows) == 3
