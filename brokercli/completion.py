"""Shell completion of values only the broker knows: targets, scopes, sessions, requests.

The completion scripts in ``completions/`` are static (no Python start-up for
command and option names).  For a value whose parameter has one of the
completers below, they ask the program itself through typer's completion
protocol (``_DBACCESS_COMPLETE=complete_bash`` with ``COMP_WORDS``/``COMP_CWORD``,
or ``complete_fish`` with the line before the cursor); typer parses the words
typed so far and calls the parameter's completer with its context.

A completer asks the broker with a short timeout (``TIMEOUT_SECONDS``) and
returns nothing on any failure — not logged in, broker down, a slow network —
since a Tab key must never print an error or hang.  Options typed on the line
(``--server``, ``--ca-file``) are honoured as they would be by the command.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

# At run time: typer reads the completers' signatures to pass them the context.
import typer

if TYPE_CHECKING:
    from brokercli.client import BrokerClient

COMPLETE_VAR = "_DBACCESS_COMPLETE"
TIMEOUT_SECONDS = 2.0

Values = list[tuple[str, str]]


def enable() -> None:
    """Register typer's shell protocols when a completion script asks (cheap otherwise)."""
    if os.environ.get(COMPLETE_VAR):
        # Re-exported by typer.completion without being declared there.
        from typer.completion import completion_init  # type: ignore[attr-defined]

        completion_init()


def _typed(ctx: typer.Context, name: str) -> Any:
    """A parameter's value as typed on this command line, in the command or above it."""
    current: Any = ctx
    while current is not None:
        value = current.params.get(name)
        if value is not None:
            return value
        current = current.parent
    return None


def _ask(ctx: typer.Context, query: Callable[[BrokerClient], Values]) -> Values:
    from brokercli import config
    from brokercli.client import BrokerClient

    # The global options typed on the line count as they would for the command.
    for name in vars(config.FLAGS):
        value = _typed(ctx, name)
        if value is not None:
            setattr(config.FLAGS, name, str(value))
    try:
        client = BrokerClient.from_env(_typed(ctx, "server"), timeout=TIMEOUT_SECONDS)
        try:
            return query(client)
        finally:
            client.close()
    except Exception:
        return []


def _matching(values: Values, incomplete: str) -> Iterator[tuple[str, str]]:
    seen: set[str] = set()
    for value, help_text in values:
        if value.startswith(incomplete) and value not in seen:
            seen.add(value)
            yield value, help_text


def targets(ctx: typer.Context, incomplete: str) -> Values:
    """Names of the targets the caller may use."""
    values = _ask(ctx, lambda c: [(t["name"], t.get("description") or "") for t in c.targets()])
    return list(_matching(values, incomplete))


def scopes(ctx: typer.Context, incomplete: str) -> Values:
    """Scopes of the target typed on the line (of every target before one is typed)."""
    target = ctx.params.get("target")

    def query(client: BrokerClient) -> Values:
        return [
            (
                s["name"],
                f"{t['name']}: default {s['default_ttl']}, max {s['max_ttl']}"
                + (", needs approval" if s.get("approval") else ""),
            )
            for t in client.targets()
            if target is None or t["name"] == target
            for s in t["scopes"]
        ]

    return list(_matching(_ask(ctx, query), incomplete))


def _sessions(ctx: typer.Context, incomplete: str, active: bool | None, limit: int) -> Values:
    def query(c: BrokerClient) -> Values:
        return [
            (s["id"], f"{s['target']} {s['scope']} {s['status']}: {s.get('reason') or ''}".strip())
            for s in c.sessions(active=active, all_=False, limit=limit)
        ]

    return list(_matching(_ask(ctx, query), incomplete))


def sessions(ctx: typer.Context, incomplete: str) -> Values:
    """The caller's recent sessions, newest first."""
    return _sessions(ctx, incomplete, active=None, limit=50)


def active_sessions(ctx: typer.Context, incomplete: str) -> Values:
    """The caller's running sessions."""
    return _sessions(ctx, incomplete, active=True, limit=100)


def pending_requests(ctx: typer.Context, incomplete: str) -> Values:
    """Pending access requests the caller made or may decide."""
    values = _ask(
        ctx,
        lambda c: [
            (r["id"], f"{r['requester']}: {r['target']} {r['scope']}")
            for r in c.requests(pending=True, mine=False, to_review=False)
        ],
    )
    return list(_matching(values, incomplete))
