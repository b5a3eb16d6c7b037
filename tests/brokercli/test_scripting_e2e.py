"""The CLI in scripts and CI, end to end against a real dev broker.

A CI job has no profile and no terminal: it names the broker with
DBACCESS_SERVER, authenticates with DBACCESS_TOKEN, trusts a private CA with
DBACCESS_CA_FILE (or --ca-file) and reads exit codes and plain output.
"""

from __future__ import annotations

import json
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
