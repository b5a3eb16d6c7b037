"""HTTP routes of the data-access audit: ``GET /v1/audit/access`` and ``GET /v1/audit/report``.

``/v1/audit/access`` answers "who read or changed which relations and columns,
masked or clear" from the access index (``server.audit.access``): one record per
statement, or with ``summary=true`` counts by identity and relation.  Admins and
auditors see everyone's statements; anyone else sees only their own (and their
agents'), whatever they ask.  ``/v1/audit/report`` is the evidence report of a
period (``server.audit.report``), for admins and auditors only.
(No ``from __future__ import annotations`` here: FastAPI must see the ``Caller``
annotation, which is local to ``register``, as an object.)
"""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query

from server.api import recordings_routes
from server.api.common import may_audit, parse_when
from server.audit import access, report
from server.errors import Forbidden, InvalidInput
from server.policy.evaluate import Identity
from server.sessions.service import SessionService


def register(app: FastAPI, service: SessionService, caller: Callable[..., Identity]) -> None:
    """Add the data-access routes to ``app``; ``caller`` is the app's authentication dependency."""
    Caller = Annotated[Identity, Depends(caller)]
    store = service.store

    @app.get("/v1/audit/access", response_model=None)
    def audit_access(
        who: Caller,
        target: str | None = None,
        table: str | None = None,
        column: str | None = None,
        identity: str | None = None,
        kind: str | None = None,
        since: str | None = None,
        until: str | None = None,
        writes: bool = False,
        clear_only: bool = False,
        summary: bool = False,
        limit: Annotated[int, Query(ge=1, le=access.MAX_LIMIT)] = 200,
    ) -> list[dict[str, Any]]:
        if column is not None and table is None:
            raise InvalidInput("a column filter needs a table", hint="add --table")
        if kind is not None and kind not in access.IDENTITY_KINDS:
            raise InvalidInput(
                f"unknown identity kind {kind!r}",
                hint="one of: " + ", ".join(access.IDENTITY_KINDS),
            )
        q = access.AccessQuery(
            target=target,
            table=table,
            column=column,
            identity=identity,
            kind=kind,
            since=parse_when(since, "since", direction="ago"),
            until=parse_when(until, "until", direction="ago"),
            writes=writes,
            clear_only=clear_only,
            viewer=None if may_audit(who) else who.name,
            limit=limit,
        )
        if summary:
            return access.summarize(store, q)
        return [r.to_json() for r in access.find(store, q)]

    @app.get("/v1/audit/report")
    def audit_report(who: Caller, since: str = "30d", until: str | None = None) -> dict[str, Any]:
        if not may_audit(who):
            raise Forbidden("the evidence report needs the admin or auditor group")
        now = datetime.now(UTC)
        start = parse_when(since, "since", direction="ago") or now - timedelta(days=30)
        end = parse_when(until, "until", direction="ago") or now
        service.audit.flush()  # the refusals the gateway decided are in it
        return report.build(store, start, end, verification=recordings_routes.verify_audit(service))
