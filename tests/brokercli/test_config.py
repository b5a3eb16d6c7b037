"""Where the CLI finds its broker: profile < DBACCESS_SERVER < --server, and which one it says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from brokercli.config import settings


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
    res = subprocess.run(
        [str(Path(sys.executable).parent / "dbaccess"), *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 7, res.stderr
    assert "cannot reach the broker at https://127.0.0.1:9" in res.stderr
    assert "server URL from DBACCESS_SERVER" in res.stderr
