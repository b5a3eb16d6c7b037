"""The dbaccess command line: typer root and command registration.

Command modules import only typer at module level; the heavy libraries (httpx,
psycopg, rich tables, keyring) load inside the commands that need them, so that
``dbaccess --help`` and shell completion stay fast.  Every command and group is
built with :mod:`brokercli.coercion`'s classes, which take option values that
need no converting as they are: typer would import pydantic for them.

Run as the program (``main()`` without arguments, as the ``dbaccess`` script
calls it), the CLI leaves through ``_leave``: its output flushed and the atexit
handlers run, the process ends without the interpreter's teardown of every
loaded module, which for a command that loaded psycopg costs more than the
command's own work on the network (scripts call ``dbaccess exec`` in loops).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import Annotated

import typer

from brokercli import coercion, completion, config, render
from brokercli.commands import access, auth, evidence, info, mcp, replay, requests
from brokercli.commands.common import add_global_options
from brokercli.errors import CliError
from brokercli.exit_codes import ExitCode, epilog

app = typer.Typer(
    name="dbaccess",
    help="Short-lived, approved, masked and recorded access to PostgreSQL.",
    epilog=epilog(),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    cls=coercion.Group,
)


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("dbaccess")
        except PackageNotFoundError:
            number = "unknown"
        print(f"dbaccess {number}")
        raise typer.Exit(int(ExitCode.OK))


@app.callback()
def root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_version,
            help="Print the version of dbaccess and exit.",
        ),
    ] = False,
) -> None:
    """Short-lived, approved, masked and recorded access to PostgreSQL."""


app.command("login")(auth.login)
app.command("logout")(auth.logout)
app.command("whoami")(auth.whoami)
app.command("targets")(info.targets)
app.command("connect")(access.connect)
app.command("run")(access.run)
app.command("exec")(access.exec_)
app.command("sessions")(info.sessions)
app.command("kill")(info.kill)
app.command("replay")(replay.replay)
app.command("request")(requests.request)
app.command("requests")(requests.requests)
app.command("approve")(requests.approve)
app.command("deny")(requests.deny)
app.command("cancel")(requests.cancel)
app.command("mcp")(mcp.mcp)
info.audit_app.command("access")(evidence.access)
info.audit_app.command("report")(evidence.report)
app.add_typer(info.audit_app, name="audit")
add_global_options(app)
for _commands in (app.registered_commands, info.audit_app.registered_commands):
    for _command in _commands:
        _command.cls = coercion.Command


def main(argv: list[str] | None = None) -> int:
    """Run the command of ``argv`` (default: the process's) and return its exit code;
    as the program (no ``argv``), end the process with that code instead."""
    code = _main(argv)
    if argv is None:
        _leave(code)
    return code


def _leave(code: int) -> None:
    """End the process with ``code`` now that the command is done, skipping the
    interpreter's teardown; where a thread that is not a daemon still runs, return
    and let the usual exit wait for it."""
    if any(t.is_alive() and not t.daemon for t in threading.enumerate()
           if t is not threading.main_thread()):  # fmt: skip
        return
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            # Output that could not be written fails the command, with the code
            # the interpreter's own exit gives it.
            code = code or 120
    os._exit(code)


def _main(argv: list[str] | None) -> int:
    config.reset_flags()
    completion.enable()
    try:
        rv = app(args=argv, prog_name="dbaccess", standalone_mode=False)
    except CliError as err:
        render.error(err)
        return int(err.code)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except Exception as exc:
        # Usage errors come from the click that typer bundles, whose classes are
        # not public: recognise them by their interface.
        show = getattr(exc, "show", None)
        if callable(show) and hasattr(exc, "exit_code"):
            show()
            return int(ExitCode.USAGE)
        if type(exc).__name__ == "Abort":
            return int(ExitCode.INTERRUPTED)
        raise
    # Without standalone mode, click returns typer.Exit's code instead of raising it.
    return rv if isinstance(rv, int) else int(ExitCode.OK)


if __name__ == "__main__":
    sys.exit(main())
