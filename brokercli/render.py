"""All terminal output goes through here (the only module that uses rich).

Data goes to stdout in the requested format (table, json, csv); messages,
progress and errors go to stderr so that scripts can pipe results safely.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
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


def table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None
) -> None:
    from rich.table import Table

    t = Table(title=title, show_lines=False)
    for col in columns:
        t.add_column(col, overflow="fold")
    for row in rows:
        t.add_row(*(_cell(v) for v in row))
    _console().print(t)


def as_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


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
