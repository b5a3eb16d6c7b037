"""All terminal output goes through here (the only module that uses rich).

Data goes to stdout in the requested format (table, json, csv); messages,
progress and errors go to stderr so that scripts can pipe results safely.  A
table on a terminal is fitted to its width; without one it is printed with
full-width columns, one record per line (``plain_table``).
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from brokercli.errors import CliError


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def info(message: str) -> None:
    _console(stderr=True).print(message, markup=False)


def error(err: CliError) -> None:
    con = _console(stderr=True)
    con.print(f"dbaccess: error: {err.message}", style="bold red", markup=False)
    if err.hint:
        con.print(f"hint: {err.hint}", style="yellow", markup=False)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value)
    return str(value)


def pairs(data: Any) -> str:
    """A record's details for a table cell: ``key=value`` pairs, not a JSON dump
    (``-o json`` gives the structure)."""
    if not isinstance(data, dict):
        return _cell(data)
    shown = []
    for key, value in data.items():
        if value is None or value == [] or value == {}:
            continue
        if isinstance(value, dict):
            shown.append(f"{key}=({pairs(value)})")
        elif isinstance(value, list | tuple):
            shown.append(f"{key}={','.join(_cell(v) for v in value)}")
        else:
            shown.append(f"{key}={_cell(value)}")
    return " ".join(shown)


def plain_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Full-width columns, one record per line: nothing folded or cut, for pipes and logs.

    A line break inside a value is written as ``\\n`` so that a record stays one line.
    """
    cells = [[_cell(v).replace("\r", "\\r").replace("\n", "\\n") for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    return [
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()
        for line in [list(columns), *cells]
    ]


def table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None
) -> None:
    if not sys.stdout.isatty():
        # Without a terminal there is no width to fit: a folded id cannot be grepped.
        lines = ([title] if title else []) + plain_table(columns, rows)
        sys.stdout.write("".join(line + "\n" for line in lines))
        return
    from rich.table import Table

    t = Table(title=title, show_lines=False)
    for col in columns:
        t.add_column(col, overflow="fold")
    for row in rows:
        t.add_row(*(_cell(v) for v in row))
    _console().print(t)


def as_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def write(text: str) -> None:
    """A document (a report) to stdout, as it is."""
    sys.stdout.write(text)


def as_csv(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(v) for v in row])


def records(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], output: str, *, title: str | None = None
) -> None:
    if output == "json":
        as_json([dict(zip(columns, row, strict=True)) for row in rows])
    elif output == "csv":
        as_csv(columns, rows)
    else:
        table(columns, rows, title=title)


def timeline(
    heading: Sequence[str],
    entries: Sequence[tuple[str, str, str, str]],
    *,
    warning: str | None = None,
) -> None:
    """A session recording: heading lines, then per event a line and its indented details.

    Each entry is (offset, event, summary, detail); the detail may span lines.
    The heading and events go to stdout (they are the data asked for); a
    warning, such as a recording that fails verification, goes to stderr.
    """
    con = _console()
    for line in heading:
        con.print(line, markup=False, style="bold")
    width = max((len(at) for at, _e, _s, _d in entries), default=0)
    for at, event, summary, detail in entries:
        con.print(f"{at:>{width}}  {event:<15} {summary}".rstrip(), markup=False)
        for line in detail.splitlines():
            con.print(
                " " * (width + 2) + "  " + line,
                markup=False,
                style="yellow" if line.startswith("masked:") else None,
            )
    if warning:
        _console(stderr=True).print(f"warning: {warning}", style="bold red", markup=False)


# How often a plain (non-terminal) progress line repeats when nothing changes.
HEARTBEAT_SECONDS = 30.0


@contextmanager
def waiting(message: str) -> Iterator[Callable[[str], None]]:
    """Progress while waiting: a spinner on a terminal, plain stderr lines otherwise.

    The yielded function takes the current state; without a terminal a line is
    written when the state changes and every ``HEARTBEAT_SECONDS`` (so CI logs
    show that something is still waiting, without a line per poll).
    """
    started = time.monotonic()

    def elapsed() -> str:
        seconds = int(time.monotonic() - started)
        return f"{seconds // 60}m{seconds % 60:02d}s"

    if sys.stderr.isatty():
        with _console(stderr=True).status(message) as status:
            yield lambda state: status.update(f"{state} ({elapsed()})")
        return
    shown = [""]
    shown_at = [0.0]

    def update(state: str) -> None:
        now = time.monotonic()
        if state != shown[0] or now - shown_at[0] >= HEARTBEAT_SECONDS:
            info(f"{state} ({elapsed()})")
            shown[0], shown_at[0] = state, now

    info(message)
    yield update


def confirm(question: str) -> bool:
    """Ask yes/no on the terminal (stderr), default no."""
    from rich.prompt import Confirm

    return bool(Confirm.ask(question, console=_console(stderr=True), default=False))
