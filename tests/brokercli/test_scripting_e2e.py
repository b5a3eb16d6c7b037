"""The CLI in scripts and CI, end to end against a real dev broker.

A CI job has no profile and no terminal: it names the broker with
DBACCESS_SERVER, authenticates with DBACCESS_TOKEN, trusts a private CA with
DBACCESS_CA_FILE (or --ca-file) and reads exit codes and plain output.
"""

from __future__ import annotations

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
