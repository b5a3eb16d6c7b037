"""The CLI without a broker: usage errors, help, exit codes and token storage."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from brokercli import tokens
from brokercli.app import main
from brokercli.exit_codes import ExitCode


@pytest.mark.parametrize(
    "argv",
    [
        ["exec"],  # missing target
        ["no-such-command"],
        ["exec", "demo", "--output", "yaml", "-c", "select 1"],
        ["connect", "demo", "--port", "70000"],
        ["exec", "demo"],  # neither -c nor -f
        ["exec", "demo", "-c", "select 1", "-f", "x.sql"],  # both
        ["run", "demo"],  # no command
        ["connect", "demo", "--print-env", "--format", "json"],  # two formats
        ["connect", "demo", "--format", "yaml"],
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DBACCESS_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("DBACCESS_TOKEN", "dba_x")
    monkeypatch.setenv("DBACCESS_SERVER", "http://127.0.0.1:9")
    assert main(argv) == ExitCode.USAGE


def test_help_lists_commands_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("connect", "run", "exec", "targets", "sessions", "kill", "audit"):
        assert command in out
    for code in ExitCode:
        assert f"{int(code):>3}  " in out


def test_not_logged_in_is_exit_4(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DBACCESS_CONFIG_DIR", str(tmp_path))
    monkeypatch.delenv("DBACCESS_TOKEN", raising=False)
    monkeypatch.setenv("DBACCESS_NO_KEYRING", "1")
    assert main(["targets"]) == ExitCode.NOT_AUTHENTICATED


def test_token_file_fallback_is_private_and_env_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DBACCESS_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setenv("DBACCESS_NO_KEYRING", "1")
    monkeypatch.delenv("DBACCESS_TOKEN", raising=False)
    where = tokens.save("http://a", "dba_secret")
    path = Path(where)
    assert path.exists()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert tokens.load("http://a") == "dba_secret"
    assert tokens.load("http://b") is None
    monkeypatch.setenv("DBACCESS_TOKEN", "dba_env")
    assert tokens.load("http://a") == "dba_env"
    monkeypatch.delenv("DBACCESS_TOKEN")
    tokens.delete("http://a")
    assert tokens.load("http://a") is None


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"dbaccess {version('dbaccess')}\n"


@pytest.mark.parametrize(
    "argv", [["--ca-file", "{ca}", "targets"], ["targets", "--ca-file", "{ca}"]]
)
def test_a_missing_ca_file_is_a_usage_error_before_or_after_the_command(
    argv: list[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DBACCESS_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("DBACCESS_TOKEN", "dba_x")
    monkeypatch.setenv("DBACCESS_SERVER", "https://127.0.0.1:9")
    missing = tmp_path / "no-such-ca.pem"
    assert main([a.format(ca=missing) for a in argv]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert f"cannot use the CA file {missing}" in err


# The program as the dbaccess script runs it, with an atexit handler of its own
# and a non-daemon thread when asked.
_AS_PROGRAM = """
import atexit, sys, threading, time
from brokercli.app import main
atexit.register(lambda: print("atexit handler ran", flush=True))
if sys.argv[1] == "thread":
    threading.Thread(target=lambda: (time.sleep(0.2), print("thread finished"))).start()
sys.argv[1:2] = []
sys.exit(main())
"""


@pytest.mark.parametrize("thread", ["no-thread", "thread"])
def test_the_program_leaves_with_its_output_and_exit_code(
    thread: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys

    monkeypatch.setenv("DBACCESS_CONFIG_DIR", str(tmp_path))
    monkeypatch.delenv("DBACCESS_TOKEN", raising=False)
    monkeypatch.setenv("DBACCESS_SERVER", "https://127.0.0.1:9")
    ok = subprocess.run(
        [sys.executable, "-c", _AS_PROGRAM, thread, "--version"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert lines[0].startswith("dbaccess ")
    assert "atexit handler ran" in lines
    assert ("thread finished" in lines) == (thread == "thread")
    failed = subprocess.run(
        [sys.executable, "-c", _AS_PROGRAM, thread, "targets"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert failed.returncode == ExitCode.NOT_AUTHENTICATED
    assert "not logged in" in failed.stderr
