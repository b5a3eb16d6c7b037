"""What a child process of ``connect`` and ``run`` sees of the parent's environment."""

from __future__ import annotations

from brokercli.commands.common import child_env
from tests.brokercli.test_hold import TICKET, _conn


def test_the_child_gets_the_session_and_none_of_dbaccess_secrets() -> None:
    env = child_env(_conn(), {"PATH": "/bin", "DBACCESS_TOKEN": "dba_x", "DBACCESS_SERVER": "s"})
    assert env["PATH"] == "/bin" and env["DBACCESS_SERVER"] == "s"
    assert "DBACCESS_TOKEN" not in env
    assert (env["PGHOST"], env["PGPORT"], env["PGPASSWORD"]) == ("127.0.0.1", "54321", TICKET)


def test_no_libpq_variable_of_the_parent_sends_the_child_elsewhere() -> None:
    # hostaddr wins over PGHOST, and a service file's host and port over the
    # environment's: either would take the child, and its ticket, off the tunnel.
    parent = {
        "PGHOSTADDR": "10.0.0.7",
        "PGSERVICE": "prod",
        "PGSERVICEFILE": "/home/me/.pg_service.conf",
        "PGHOST": "db.internal",
        "PGPORT": "5432",
        "PGTZ": "UTC",
    }
    env = child_env(_conn(), parent)
    assert not {"PGHOSTADDR", "PGSERVICE", "PGSERVICEFILE"} & env.keys()
    assert (env["PGHOST"], env["PGPORT"], env["PGTZ"]) == ("127.0.0.1", "54321", "UTC")
