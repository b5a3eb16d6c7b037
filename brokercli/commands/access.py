"""connect, run and exec: the three ways to use a database through dbaccess.

Each one starts a session, opens the local tunnel and ends the session when it
is done (``common.session_tunnel``).  While a child (psql or the user's command)
runs, Ctrl-C belongs to the child: dbaccess ignores SIGINT itself and forwards
SIGTERM/SIGHUP, so the session is always ended and revoked on the way out.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from brokercli import render
from brokercli.commands.common import (
    DEFAULT_WAIT,
    ApprovalWait,
    BreakGlassOpt,
    NoWaitOpt,
    Output,
    OutputOpt,
    PortOpt,
    ReasonOpt,
    ScopeOpt,
    ServerOpt,
    TargetArg,
    TtlOpt,
    WaitTimeoutOpt,
    child_env,
    session_tunnel,
)
from brokercli.commands.hold import DetailsFormat, details, hold
from brokercli.errors import CliError, unprefixed
from brokercli.exit_codes import ExitCode


def _not_found(command: str) -> CliError:
    return CliError(
        f"command not found: {command}",
        code=ExitCode.COMMAND_NOT_FOUND,
        hint="check the name and PATH, or give the command's path",
    )


def _not_executable(command: str, why: str = "permission denied") -> CliError:
    return CliError(
        f"cannot execute {command}: {why}",
        code=ExitCode.CANNOT_EXECUTE,
        hint=f"make it executable (chmod +x {command}) or run it with its interpreter",
    )


def _check_command(command: str) -> None:
    """Fail as a shell would (127 not found, 126 not executable), before a session starts."""
    if shutil.which(command) is not None:
        return
    # which() also passes over files that exist but are not executable.
    if os.sep in command:
        candidates = [Path(command)]
    else:
        path = os.environ.get("PATH", os.defpath)
        candidates = [Path(d or ".") / command for d in path.split(os.pathsep)]
    for candidate in candidates:
        if candidate.is_dir():
            raise _not_executable(command, "is a directory")
        if candidate.exists():
            raise _not_executable(command)
    raise _not_found(command)


def _run_child(argv: list[str], env: dict[str, str]) -> int:
    try:
        proc = subprocess.Popen(argv, env=env)
    except FileNotFoundError:
        raise _not_found(argv[0]) from None
    except PermissionError:
        raise _not_executable(argv[0]) from None

    def _forward(signum: int, _frame: Any) -> None:
        proc.send_signal(signum)

    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
        signal.SIGTERM: signal.signal(signal.SIGTERM, _forward),
        signal.SIGHUP: signal.signal(signal.SIGHUP, _forward),
    }
    try:
        rc = proc.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    # A child killed by a signal exits like a shell reports it.
    return 128 - rc if rc < 0 else rc


def _psql() -> str:
    found = shutil.which("psql")
    if not found:
        raise CliError(
            "psql is not installed",
            code=ExitCode.USAGE,
            hint="install the PostgreSQL client, or use --no-launch / dbaccess run",
        )
    return found


def connect(
    target: TargetArg,
    scope: ScopeOpt = None,
    ttl: TtlOpt = None,
    reason: ReasonOpt = None,
    port: PortOpt = 0,
    no_launch: Annotated[
        bool,
        typer.Option(
            "--no-launch", help="Print connection details and wait for Ctrl-C instead of psql."
        ),
    ] = False,
    print_env: Annotated[
        bool,
        typer.Option(
            "--print-env",
            help="Print export PGHOST=... lines for other tools and keep the tunnel open "
            "until Ctrl-C or kill (like --format env).",
        ),
    ] = False,
    fmt: Annotated[
        DetailsFormat | None,
        typer.Option(
            "--format",
            help="Print the connection details in this format on stdout (for GUI clients "
            "and other tools) and keep the tunnel open until Ctrl-C or kill.",
        ),
    ] = None,
    server: ServerOpt = None,
    no_wait: NoWaitOpt = False,
    wait_timeout: WaitTimeoutOpt = DEFAULT_WAIT,
    break_glass: BreakGlassOpt = False,
) -> None:
    """Open psql on TARGET through a fresh, expiring database role.

    The role exists only for this session: it is revoked when psql exits (or on
    Ctrl-C with --no-launch). The database password is never shown; psql logs in
    to the local tunnel with a one-time session ticket.

    With --no-launch, --print-env or --format, other clients use the tunnel
    (e.g. DBeaver or pgAdmin with the host, port, user and password printed) while
    dbaccess waits: Ctrl-C or SIGTERM ends the session (exit 0); if the session
    ends elsewhere (dbaccess kill, its deadline) dbaccess says so and exits 8.
    """
    if print_env:
        if fmt not in (None, DetailsFormat.env):
            raise CliError("--print-env is --format env: give one of them", code=ExitCode.USAGE)
        fmt = DetailsFormat.env
    psql = None if no_launch or fmt is not None else _psql()
    wait = ApprovalWait(not no_wait, wait_timeout, break_glass)
    with session_tunnel(
        server, target, scope, ttl, reason, command="connect", port=port, approval=wait
    ) as conn:
        if psql is None:

            def announce() -> None:
                if fmt is None:
                    render.info(
                        f"listening on {conn.host}:{conn.port}\n"
                        f'  psql "host={conn.host} port={conn.port} '
                        f'dbname={conn.session.database} user={conn.user} sslmode=disable"\n'
                        f"  password (session ticket): {conn.session.ticket}\n"
                        "press Ctrl-C to end the session"
                    )
                else:
                    sys.stdout.write(details(conn, fmt))
                    sys.stdout.flush()
                    render.info(
                        f"tunnel open on {conn.host}:{conn.port}; "
                        f"Ctrl-C (or kill {os.getpid()}) ends the session"
                    )

            hold(conn, announce)
            return
        rc = _run_child([psql], child_env(conn))
    if rc:
        raise typer.Exit(rc)


def run(
    target: TargetArg,
    command: Annotated[list[str], typer.Argument(help="The command to run, after --.")],
    scope: ScopeOpt = None,
    ttl: TtlOpt = None,
    reason: ReasonOpt = None,
    port: PortOpt = 0,
    server: ServerOpt = None,
    no_wait: NoWaitOpt = False,
    wait_timeout: WaitTimeoutOpt = DEFAULT_WAIT,
    break_glass: BreakGlassOpt = False,
) -> None:
    """Run COMMAND with PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE set to a session.

    Example: dbaccess run prod-db --scope write -- ./migrate.sh

    The session ends (and its role is revoked) when COMMAND exits; dbaccess exits
    with COMMAND's status (127 if it is not found, 126 if it cannot be executed).
    COMMAND never sees DBACCESS_TOKEN or any other DBACCESS_* secret.
    """
    argv = list(command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise CliError(
            "no command given", code=ExitCode.USAGE, hint="dbaccess run TARGET -- CMD ..."
        )
    # Fail before a session (and a database role) is created for nothing.
    _check_command(argv[0])
    wait = ApprovalWait(not no_wait, wait_timeout, break_glass)
    with session_tunnel(
        server, target, scope, ttl, reason, command="run", port=port, approval=wait
    ) as conn:
        rc = _run_child(argv, child_env(conn))
    if rc:
        raise typer.Exit(rc)


def exec_(
    target: TargetArg,
    sql: Annotated[str | None, typer.Option("--command", "-c", help="SQL to run.")] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="File of SQL to run ('-' for stdin).", allow_dash=True),
    ] = None,
    output: OutputOpt = Output.table,
    scope: ScopeOpt = None,
    ttl: TtlOpt = None,
    reason: ReasonOpt = None,
    server: ServerOpt = None,
    no_wait: NoWaitOpt = False,
    wait_timeout: WaitTimeoutOpt = DEFAULT_WAIT,
    break_glass: BreakGlassOpt = False,
    request_review: Annotated[
        bool,
        typer.Option(
            "--request-review",
            help="Ask reviewers to approve this exact SQL first (by its SHA-256), wait, "
            "then run it once. Any byte changed after approval means no approval.",
        ),
    ] = False,
    header_comments: Annotated[
        bool,
        typer.Option(
            "--header-comments",
            help="With --output csv: a '# masked: COLUMN,...' line before each result's "
            "header names the columns the gateway masked (empty when none).",
        ),
    ] = False,
) -> None:
    """Run SQL non-interactively and print the results (for scripts and CI).

    Several statements may be given; each result set is printed. Exits 3 if a
    statement fails (the rest are not run).

    Masked columns are marked: with --output json each result has a "masked"
    list of the column names the gateway masked (by the target's masking
    rules); with --output csv and --header-comments a "# masked:" comment line
    precedes each result's header.

    Example (CI): dbaccess exec prod-db --scope write -f migration.sql --request-review
    """
    if (sql is None) == (file is None):
        raise CliError("give exactly one of --command/-c or --file/-f", code=ExitCode.USAGE)
    if file is not None:
        try:
            text = sys.stdin.read() if str(file) == "-" else file.read_text()
        except OSError as exc:
            raise CliError(f"cannot read {file}: {exc}", code=ExitCode.USAGE) from None
    else:
        assert sql is not None
        text = sql
    if not text.strip():
        raise CliError("no SQL to run", code=ExitCode.USAGE)
    wait = ApprovalWait(not no_wait, wait_timeout, break_glass)
    if request_review:
        _review_first(server, target, scope, reason, text, wait)
    with session_tunnel(
        server,
        target,
        scope,
        ttl,
        reason,
        command="exec",
        quiet=output != Output.table,
        approval=wait,
    ) as conn:
        _execute(conn.env(), text, output, header_comments=header_comments)


def _review_first(
    server: str | None,
    target: str,
    scope: str | None,
    reason: str | None,
    text: str,
    wait: ApprovalWait,
) -> None:
    """Open a review of exactly ``text`` and wait until it is approved."""
    from brokercli.client import BrokerClient
    from brokercli.commands.requests import approve_command, parse_wait, wait_for_approval

    timeout = parse_wait(wait.timeout)
    client = BrokerClient.from_env(server)
    try:
        answer = client.request_review(target, scope, text, reason)
        request = answer["request"]
        if request["status"] == "approved":
            return
        if not wait.wait:
            # As a session's pending approval: the id on stdout, one error with the way on.
            print(request["id"])
            raise CliError(
                f"review {request['id']} is pending",
                code=ExitCode.PENDING,
                hint=approve_command(request["id"])
                + "; then run the same command again without changing a byte of the SQL "
                "(it runs once)",
            )
        wait_for_approval(
            client,
            {"id": request["id"], "message": f"review {request['id']} of the SQL to run"},
            timeout,
        )
    finally:
        client.close()


def _execute(env: dict[str, str], text: str, output: Output, *, header_comments: bool) -> None:
    import psycopg
    from psycopg.conninfo import make_conninfo

    conninfo = make_conninfo(
        host=env["PGHOST"],
        port=env["PGPORT"],
        user=env["PGUSER"],
        password=env["PGPASSWORD"],
        dbname=env["PGDATABASE"],
        sslmode="disable",
        application_name="dbaccess exec",
        connect_timeout="15",
    )
    results: list[dict[str, Any]] = []
    try:
        with psycopg.connect(conninfo, autocommit=True) as pg, psycopg.ClientCursor(pg) as cur:
            cur.execute(text.encode())
            masked = _masked_columns(pg.info.parameter_status(MASKED_PARAMETER))
            described = 0
            while True:
                if cur.description is not None:
                    cols = [d.name for d in cur.description]
                    rows = cur.fetchall()
                    marked = [cols[p] for p in masked.get(described, ()) if p < len(cols)]
                    described += 1
                    results.append(
                        {
                            "columns": cols,
                            "rows": rows,
                            "status": cur.statusmessage,
                            "masked": marked,
                        }
                    )
                else:
                    results.append({"columns": None, "rows": None, "status": cur.statusmessage})
                if not cur.nextset():
                    break
    except psycopg.OperationalError as exc:
        # The gateway's own FATAL (its message starts with "dbaccess:") when there is one,
        # else libpq's text, on one line.
        diag = exc.diag
        why = (diag.message_primary if diag else None) or " ".join(str(exc).split())
        raise CliError(
            f"cannot run SQL through the gateway: {unprefixed(why)}",
            code=ExitCode.UNAVAILABLE,
            hint=diag.message_hint if diag else None,
        ) from None
    except psycopg.Error as exc:
        diag = exc.diag
        hint = diag.message_hint if diag else None
        state = f" [{exc.sqlstate}]" if exc.sqlstate else ""
        _print_results(results, output, header_comments)
        raise CliError(
            f"{diag.message_primary if diag else exc}{state}", code=ExitCode.SQL_ERROR, hint=hint
        ) from None
    _print_results(results, output, header_comments)


# The gateway's report of the masked columns of a connection's simple Query
# (server/gateway/masking_relay.py, REPORT_PARAMETER): exec sends one Query,
# the connection's first.
MASKED_PARAMETER = "dbaccess.masked_columns"


def _masked_columns(value: str | None) -> dict[int, list[int]]:
    """Result index -> positions of its masked columns, from the gateway's report."""
    if not value:
        return {}
    try:
        report = json.loads(value)
        if report.get("query") != 1:
            return {}
        return {
            int(r["result"]): [int(c["position"]) for c in r["columns"]]
            for r in report.get("results", ())
        }
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}


def _print_results(results: list[dict[str, Any]], output: Output, header_comments: bool) -> None:
    if output == Output.json:
        render.as_json(
            [
                {
                    "status": r["status"],
                    "rows": None
                    if r["columns"] is None
                    else [dict(zip(r["columns"], row, strict=True)) for row in r["rows"]],
                    **({} if r["columns"] is None else {"masked": r["masked"]}),
                }
                for r in results
            ]
        )
        return
    for r in results:
        if r["columns"] is None:
            if output == Output.table:
                render.info(r["status"] or "")
            continue
        if output == Output.csv and header_comments:
            print("# masked: " + ",".join(r["masked"]))
        render.records(r["columns"], r["rows"], output.value)
