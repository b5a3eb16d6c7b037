"""``connect`` without psql: the tunnel's details for other clients, and holding it open.

``details`` writes what a client needs to use the tunnel — as shell ``export``
lines (``--print-env``), a libpq URI, a ``pg_service.conf`` section or JSON —
as a pure function of the connection.  ``hold`` then keeps the tunnel open until
Ctrl-C or SIGTERM (the session is ended and revoked on the way out, exit 0), or
until the session ends elsewhere — ``dbaccess kill``, its deadline, an
administrator — which the broker is asked about every ``POLL_SECONDS``; then the
command exits 8 and says why.
"""

from __future__ import annotations

import json
import shlex
import signal
import threading
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from brokercli.errors import CliError
from brokercli.exit_codes import ExitCode

if TYPE_CHECKING:
    from brokercli.commands.common import Connection

POLL_SECONDS = 2.0
POLL_TIMEOUT = 5.0


class DetailsFormat(StrEnum):
    env = "env"
    uri = "uri"
    pg_service = "pg_service"
    json = "json"


def _libpq(conn: Connection) -> dict[str, str]:
    env = conn.env()
    return {
        "host": env["PGHOST"],
        "port": env["PGPORT"],
        "user": env["PGUSER"],
        "password": env["PGPASSWORD"],
        "dbname": env["PGDATABASE"],
        "sslmode": env["PGSSLMODE"],
    }


def uri(conn: Connection) -> str:
    p = _libpq(conn)
    return (
        f"postgresql://{quote(p['user'], safe='')}:{quote(p['password'], safe='')}"
        f"@{p['host']}:{p['port']}/{quote(p['dbname'], safe='')}?sslmode={p['sslmode']}"
    )


def service_name(target: str) -> str:
    return "dbaccess-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in target)


def details(conn: Connection, fmt: DetailsFormat) -> str:
    """The tunnel's connection details in ``fmt``, ending with a newline."""
    s = conn.session
    about = f"session {s.id}: {s.target} scope={s.scope}, expires {s.expires_at}"
    if fmt == DetailsFormat.env:
        names = ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSSLMODE")
        env = conn.env()
        lines = [f"# {about}"] + [f"export {n}={shlex.quote(env[n])}" for n in names]
        return "\n".join(lines) + "\n"
    if fmt == DetailsFormat.uri:
        return uri(conn) + "\n"
    if fmt == DetailsFormat.pg_service:
        section = [f"# {about}", f"[{service_name(s.target)}]"]
        section += [f"{key}={value}" for key, value in _libpq(conn).items()]
        return "\n".join(section) + "\n"
    data: dict[str, Any] = {
        "session": s.id,
        "target": s.target,
        "scope": s.scope,
        "expires_at": s.expires_at,
        **_libpq(conn),
        "port": conn.port,
        "uri": uri(conn),
    }
    return json.dumps(data, indent=2) + "\n"


def _ended(conn: Connection, broker: Any) -> dict[str, Any] | None:
    """The session's record if it is over; None while it runs or the broker cannot say."""
    try:
        record = broker.session(conn.session.id)
    except CliError:
        # A broker briefly unreachable is asked again at the next poll; the
        # session's deadline is enforced by the broker and the gateway either way.
        return None
    return record if record.get("status") != "active" else None


def hold(conn: Connection, announce: Callable[[], None] = lambda: None) -> None:
    """Return on Ctrl-C or SIGTERM; raise CliError (exit 8) once the session ended elsewhere.

    ``announce`` tells the user (or the program that started dbaccess) how to use
    the tunnel and to press Ctrl-C: it runs once both signals end the session
    cleanly, so a signal sent the moment it is read is never the one that kills
    dbaccess with the session left open."""
    from brokercli.client import BrokerClient

    stop = threading.Event()
    # Both set here, SIGINT too: a dbaccess started in the background of a
    # script inherits SIGINT ignored, and would then hold the session until
    # its deadline when told to stop the way the user was told to.
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        watcher = BrokerClient(conn.broker.cfg, conn.broker.token, timeout=POLL_TIMEOUT)
    except BaseException:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        raise
    try:
        announce()
        while not stop.wait(POLL_SECONDS):
            record = _ended(conn, watcher)
            if record is not None:
                why = record.get("end_reason") or record.get("status")
                raise CliError(
                    f"session {conn.session.id} has ended: {why}",
                    code=ExitCode.CONFLICT,
                    hint=f"start a new one: dbaccess connect {conn.session.target}",
                )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        watcher.close()
