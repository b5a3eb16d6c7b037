"""Where the CLI finds its broker: profile < DBACCESS_SERVER < --server, and which one it says."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from brokercli import tokens
from brokercli.config import (
    check_profile_name,
    profile_name,
    profile_names,
    settings,
    use_profile,
)
from brokercli.errors import CliError
from brokercli.exit_codes import ExitCode


def dbaccess(*args: str) -> subprocess.CompletedProcess[str]:
    """The ``dbaccess`` console script, in this test's environment."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "dbaccess"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(autouse=True)
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DBACCESS_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    monkeypatch.delenv("DBACCESS_SERVER", raising=False)
    monkeypatch.delenv("DBACCESS_TOKEN", raising=False)
    return tmp_path


def test_profile_then_environment_then_flag(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (config_dir / "profile.json").write_text(json.dumps({"server": "https://profile:8700"}))
    assert (settings().server, settings().source) == (
        "https://profile:8700",
        str(config_dir / "profile.json"),
    )
    monkeypatch.setenv("DBACCESS_SERVER", "https://env:8700/")
    assert (settings().server, settings().source) == ("https://env:8700", "DBACCESS_SERVER")
    # What the --server options hand over when only the variable was set.
    assert settings("https://env:8700/").source == "DBACCESS_SERVER"
    assert (settings("https://flag:8700").server, settings("https://flag:8700").source) == (
        "https://flag:8700",
        "--server",
    )


@pytest.mark.parametrize("command", [["login", "--no-browser"], ["whoami"], ["targets"]])
def test_commands_name_the_variable_when_the_broker_is_unreachable(
    command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DBACCESS_SERVER", "https://127.0.0.1:9")
    monkeypatch.setenv("DBACCESS_TOKEN", "not-used-before-the-connection-fails")
    res = dbaccess(*command)
    assert res.returncode == 7, res.stderr
    assert "cannot reach the broker at https://127.0.0.1:9" in res.stderr
    assert "server URL from DBACCESS_SERVER" in res.stderr


def _write(path: Path, data: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture
def two_profiles(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.delenv("DBACCESS_PROFILE", raising=False)
    _write(config_dir / "profile.json", {"server": "https://default:8700"})
    _write(config_dir / "profiles" / "reviewer.json", {"server": "https://reviewer:8700"})
    yield config_dir
    use_profile(None)


def test_a_profile_is_chosen_by_flag_then_variable_then_default(
    two_profiles: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (profile_name(), settings().server) == ("default", "https://default:8700")
    monkeypatch.setenv("DBACCESS_PROFILE", "reviewer")
    assert (profile_name(), settings().server) == ("reviewer", "https://reviewer:8700")
    assert settings().source == str(two_profiles / "profiles" / "reviewer.json")
    use_profile("default")  # --profile wins over the variable
    assert settings().server == "https://default:8700"
    assert profile_names() == ["default", "reviewer"]


def test_each_profile_keeps_its_own_token_for_the_same_broker(two_profiles: Path) -> None:
    tokens.save("https://dev:1", "dba_dev")
    tokens.save("https://dev:1", "dba_reviewer", "reviewer")
    assert tokens.load("https://dev:1") == "dba_dev"
    use_profile("reviewer")
    assert tokens.load("https://dev:1") == "dba_reviewer"
    tokens.delete("https://dev:1")
    assert tokens.load("https://dev:1") is None
    assert tokens.load("https://dev:1", "default") == "dba_dev"


def test_an_unknown_profile_is_a_usage_error_naming_the_ones_there(two_profiles: Path) -> None:
    use_profile("prod")
    with pytest.raises(CliError) as caught:
        settings()
    assert caught.value.code == ExitCode.USAGE
    assert "no profile 'prod'" in caught.value.message
    assert "profiles: default, reviewer" in caught.value.message
    assert caught.value.hint == "create it with: dbaccess --profile prod login --server URL"
    # Logging in to a new profile names its broker.
    assert settings("https://prod:8700").server == "https://prod:8700"


@pytest.mark.parametrize("name", ["", "../x", "a b", "x" * 65])
def test_profile_names_are_plain(name: str) -> None:
    with pytest.raises(CliError):
        use_profile(name) if name else check_profile_name(name)


@pytest.mark.parametrize(
    ("before", "after", "variable"),
    [(["--profile", "ci"], [], None), ([], ["--profile", "ci"], None), ([], [], "ci")],
    ids=["before-the-command", "after-the-command", "variable"],
)
def test_every_command_takes_the_profile(
    two_profiles: Path,
    monkeypatch: pytest.MonkeyPatch,
    before: list[str],
    after: list[str],
    variable: str | None,
) -> None:
    _write(two_profiles / "profiles" / "ci.json", {"server": "https://127.0.0.1:9"})
    monkeypatch.setenv("DBACCESS_TOKEN", "not-used-before-the-connection-fails")
    if variable:
        monkeypatch.setenv("DBACCESS_PROFILE", variable)
    res = dbaccess(*before, "whoami", *after)
    assert res.returncode == 7, res.stderr
    assert "cannot reach the broker at https://127.0.0.1:9" in res.stderr
