"""The CLI in scripts and CI, end to end against a real dev broker.

A CI job has no profile and no terminal: it names the broker with
DBACCESS_SERVER, authenticates with DBACCESS_TOKEN, trusts a private CA with
DBACCESS_CA_FILE (or --ca-file) and reads exit codes and plain output.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.demo.provision import DemoTarget
from tests.fix_broker import BIN, Broker, demo_policy, running_broker

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
# The demo policy plus a scope that needs approval, so that there are requests to complete.
POLICY = demo_policy(
    scopes="""\
      ops:
        grants: [demo_read]
        max_ttl: 1h
        allow: {groups: [dev]}
        approval:
          approvers: {groups: [dba]}
"""
)


@pytest.fixture(scope="module")
def broker(demo_target: DemoTarget) -> Iterator[Broker]:
    with running_broker(demo_target, POLICY) as b:
        yield b


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


def test_kill_ends_a_connect_no_launch(broker: Broker) -> None:
    proc = broker.spawn("connect", "demo", "--no-launch")
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("session s-"), line + proc.stderr.read()
        session_id = line.split()[1].rstrip(":")
        kill = broker.cli("kill", session_id)
        assert kill.returncode == 0, kill.stderr
        assert proc.wait(30) == 8
        assert f"session {session_id} has ended" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def test_a_waiting_connect_exits_8_when_its_session_reaches_its_deadline(broker: Broker) -> None:
    proc = broker.spawn("connect", "demo", "--format", "uri", "--ttl", "3s")
    try:
        read_until(proc, lambda got: len(got) == 1)
        assert proc.wait(60) == 8
        assert proc.stderr is not None
        err = proc.stderr.read()
        assert "has ended" in err and "dbaccess connect demo" in err
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


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


def complete_bash(broker: Broker, line: str, **env: str) -> list[str]:
    """What typer's completion protocol answers for the last word of ``line``."""
    words = shlex.split(line) + ([""] if line.endswith(" ") else [])
    res = broker.cli(
        env={
            "_DBACCESS_COMPLETE": "complete_bash",
            "COMP_WORDS": line,
            "COMP_CWORD": str(len(words) - 1),
            **env,
        }
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    return res.stdout.split()


def bash_script_complete(broker: Broker, words: list[str], **env: str) -> list[str]:
    """COMPREPLY of completions/dbaccess.bash for the last of ``words``, as bash asks it."""
    code = (
        f"source {shlex.quote(str(ROOT / 'completions' / 'dbaccess.bash'))}\n"
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        "_dbaccess\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    res = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=broker.env(**env),
        check=False,
    )
    assert res.returncode == 0, res.stderr
    return [line for line in res.stdout.splitlines() if line]


def test_completion_offers_targets_scopes_sessions_and_requests_from_the_broker(
    broker: Broker,
) -> None:
    assert complete_bash(broker, "dbaccess exec ") == ["demo"]
    assert complete_bash(broker, "dbaccess connect d") == ["demo"]
    assert complete_bash(broker, "dbaccess connect demo --scope ") == ["read", "write", "ops"]
    assert complete_bash(broker, "dbaccess exec demo -s w") == ["write"]
    assert complete_bash(broker, "dbaccess audit --target ") == ["demo"]

    holder = broker.spawn("connect", "demo", "--format", "uri")
    try:
        read_until(holder, lambda got: len(got) == 1)
        active = json.loads(broker.cli("sessions", "--active", "-o", "json").stdout)
        assert len(active) == 1
        running = active[0]["id"]
        assert complete_bash(broker, "dbaccess kill ") == [running]
        assert running in complete_bash(broker, "dbaccess replay s-")
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait(30)
        holder.stdout.close()  # type: ignore[union-attr]
        holder.stderr.close()  # type: ignore[union-attr]
    assert complete_bash(broker, "dbaccess kill ") == []

    asked = broker.cli("request", "demo", "--scope", "ops", "--reason", "INC-9")
    assert asked.returncode == 0, asked.stderr
    request_id = asked.stdout.strip()
    try:
        for verb in ("approve", "deny", "cancel"):
            assert complete_bash(broker, f"dbaccess {verb} ") == [request_id]
    finally:
        broker.cli("cancel", request_id)


def test_the_bash_script_asks_the_program_for_broker_values(
    broker: Broker, ci_token: str, tmp_path: Path
) -> None:
    assert bash_script_complete(broker, ["dbaccess", "exec", ""]) == ["demo"]
    assert bash_script_complete(broker, ["dbaccess", "run", "demo", "-s", "r"]) == ["read"]
    # bash splits --scope=w into three words; the reply keeps the option's prefix.
    assert bash_script_complete(broker, ["dbaccess", "exec", "demo", "--scope", "=", "w"]) == [
        "write"
    ]
    assert bash_script_complete(broker, ["dbaccess", "exec", "demo", "--scope=w"]) == [
        "--scope=write"
    ]
    # A CI job's settings on the line or in the environment are the command's.
    env = ci_env(broker, tmp_path, ci_token)
    ca = str(broker.data_dir / "tls" / "ca.crt")
    assert bash_script_complete(broker, ["dbaccess", "exec", ""], **env) == []
    assert bash_script_complete(broker, ["dbaccess", "exec", "--ca-file", ca, ""], **env) == [
        "demo"
    ]
    assert bash_script_complete(broker, ["dbaccess", "exec", ""], DBACCESS_CA_FILE=ca, **env) == [
        "demo"
    ]


def test_completion_is_silent_and_quick_when_the_broker_does_not_answer(
    broker: Broker, ci_token: str, tmp_path: Path
) -> None:
    with socket.socket() as silent:
        # Accepts connections (the kernel does) but never answers a request.
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        for server in (f"https://127.0.0.1:{port}", "http://127.0.0.1:9"):
            env = ci_env(broker, tmp_path, ci_token, DBACCESS_SERVER=server)
            started = time.monotonic()
            assert complete_bash(broker, "dbaccess exec ", **env) == []
            # A bound, not a benchmark: the completer's timeout, not the client's 30 s.
            assert time.monotonic() - started < 15


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_the_fish_script_asks_the_program_for_broker_values(broker: Broker) -> None:
    def complete(line: str) -> list[str]:
        script = shlex.quote(str(ROOT / "completions" / "dbaccess.fish"))
        res = subprocess.run(
            ["fish", "--no-config", "-c", f"source {script}; complete -C {shlex.quote(line)}"],
            capture_output=True,
            text=True,
            timeout=60,
            env=broker.env(),
            check=False,
        )
        assert res.returncode == 0, res.stderr
        return [row.split("\t", 1)[0] for row in res.stdout.splitlines()]

    assert complete("dbaccess exec ") == ["demo"]
    assert sorted(complete("dbaccess connect demo --scope ")) == ["ops", "read", "write"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_the_zsh_script_asks_the_program_for_broker_values(broker: Broker) -> None:
    def offered(lbuffer: str) -> list[str]:
        # The script's helper, with compadd standing in for the completion system's.
        code = (
            "autoload -Uz compinit && compinit -u -D\n"
            f"source {shlex.quote(str(ROOT / 'completions' / 'dbaccess.zsh'))}\n"
            "compadd() { shift; print -l -- $@ }\n"
            f"LBUFFER={shlex.quote(lbuffer)}\n"
            "__dbaccess_dynamic\n"
        )
        res = subprocess.run(
            ["zsh", "-f", "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            env=broker.env(),
            check=False,
        )
        assert res.returncode == 0, res.stderr
        return res.stdout.split()

    assert offered("dbaccess exec ") == ["demo"]
    assert offered("dbaccess exec demo --scope w") == ["write"]


def _ignoring_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize(
    ("sig", "background"),
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["SIGINT", "SIGTERM", "SIGINT-started-in-the-background"],
)
def test_a_signal_sent_the_moment_connect_says_ctrl_c_ends_the_session_cleanly(
    broker: Broker, sig: signal.Signals, background: bool
) -> None:
    """A program that starts ``connect --no-launch`` and stops it as soon as it
    reads "press Ctrl-C" gets exit 0 and an ended session, not a dbaccess killed
    by the signal with its role left to the deadline -- also when it was
    started in the background of a script, which starts it with SIGINT ignored."""
    proc = subprocess.Popen(
        [str(BIN / "dbaccess"), "connect", "demo", "--no-launch"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=broker.env(),
        preexec_fn=_ignoring_sigint if background else None,
    )
    assert proc.stderr is not None
    try:
        deadline = time.monotonic() + 60
        text = ""
        while "press Ctrl-C" not in text and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            text += line
        assert "press Ctrl-C" in text, text
        proc.send_signal(sig)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()
    newest = json.loads(broker.cli("sessions", "-o", "json", "--limit", "1").stdout)[0]
    assert newest["status"] == "ended" and newest["revocation"]["verified"] is True


# What a script's `dbaccess exec` has no use for: the broker's web framework and
# its store, the SQL analysis, rich (plain CSV needs no terminal rendering), the
# keyring (the token is in the environment), cloud clients.
EXEC_NEVER_LOADS = (
    "server", "fastapi", "starlette", "uvicorn", "sqlalchemy", "sqlglot", "rich",
    "keyring", "httpx", "boto3", "hvac", "mcp",
)  # fmt: skip
_PROBE = """
import json, sys
from brokercli.app import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "loaded": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def test_a_scripts_exec_loads_neither_the_web_framework_nor_rich(
    broker: Broker, ci_token: str, tmp_path: Path
) -> None:
    import sys

    ca = str(broker.data_dir / "tls" / "ca.crt")
    env = broker.env(**ci_env(broker, tmp_path, ci_token, DBACCESS_CA_FILE=ca))
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, "exec", "demo", "-c", "select 1 as one", "-o", "csv"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    *rows, last = proc.stdout.splitlines()
    result = json.loads(last)
    assert (result["rc"], rows) == (0, ["one", "1"])
    assert "psycopg" in result["loaded"]  # the probe saw the exec's own imports
    assert sorted(set(EXEC_NEVER_LOADS) & set(result["loaded"])) == []
