"""A session held open by `dbaccess connect --no-launch`, for tests that need
the ticket and the tunnel port to drive psql or psycopg themselves."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests.fix_broker import BIN, Broker


@dataclass
class HeldSession:
    proc: subprocess.Popen[str]
    session_id: str
    port: int
    ticket: str
    database: str

    def env(self, password: str | None = None) -> dict[str, str]:
        """libpq variables for a psql (or any libpq client) talking to the tunnel."""
        return {
            "PATH": "/usr/bin:/bin",
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.port),
            "PGUSER": "dev",
            "PGDATABASE": self.database,
            "PGPASSWORD": self.ticket if password is None else password,
            "PGSSLMODE": "disable",
            "PGCONNECT_TIMEOUT": "10",
        }

    def psql(
        self, sql: str, *, password: str | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["psql", "-XAt", "-v", "ON_ERROR_STOP=1", "-c", sql],
            env=self.env(password),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def psql_script(self, script: str, *, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """psql reading ``script`` from stdin: each statement goes as a Query of its
        own, and psql goes on after an error, as it does for a script file."""
        return subprocess.run(
            ["psql", "-XAt", "-f", "-"],
            input=script,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def dsn(self, password: str | None = None) -> str:
        pw = self.ticket if password is None else password
        return (
            f"host=127.0.0.1 port={self.port} dbname={self.database} user=dev "
            f"password={pw} sslmode=disable connect_timeout=10"
        )

    def end(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)


@contextmanager
def held_session(
    broker: Broker, *args: str, timeout: float = 30, token: str | None = None
) -> Iterator[HeldSession]:
    """``token``: act as another identity (a broker API token, see ``Broker.token``)."""
    proc = subprocess.Popen(
        [str(BIN / "dbaccess"), "connect", "demo", "--no-launch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=broker.env(**({"DBACCESS_TOKEN": token} if token else {})),
    )
    assert proc.stderr is not None
    text = ""
    deadline = time.monotonic() + timeout
    try:
        while "press Ctrl-C" not in text:
            line = proc.stderr.readline()
            if not line:
                raise RuntimeError(f"connect --no-launch exited: {text}")
            text += line
            if time.monotonic() > deadline:
                raise RuntimeError(f"connect --no-launch did not get ready: {text}")
        session_id = re.search(r"session (s-[0-9a-f]+)", text).group(1)  # type: ignore[union-attr]
        port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", text).group(1))  # type: ignore[union-attr]
        ticket = re.search(r"session ticket\): (\S+)", text).group(1)  # type: ignore[union-attr]
        database = re.search(r"dbname=(\S+)", text).group(1)  # type: ignore[union-attr]
        yield HeldSession(proc, session_id, port, ticket, database)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
