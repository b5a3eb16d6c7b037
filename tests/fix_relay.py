"""Helpers for tests that drive the gateway's Relay without sockets: a catalog
of fixed columns, DataRow frames, the message types a wire carries, the
session a StatementGuard under test guards, and a recorder that makes each
event at once."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from server.audit.recording import Build, RecordFn, event_data
from server.gateway import pgwire
from server.gateway.catalog import CatalogSnapshot
from server.gateway.masking import ColumnRef
from server.gateway.pgwire import DataRow
from server.gateway.statements import SessionFacts

# Who a StatementGuard under test guards: alice in the write scope.
FACTS = SessionFacts(
    session_id="s-1",
    identity="alice",
    groups=frozenset({"dev"}),
    target="demo",
    scope="write",
    reason=None,
    ttl=timedelta(hours=1),
)


class StaticCatalog:
    """A catalog of one relation (``oid``) whose columns are ``columns``, in attnum
    order; ``functions``: the names of the functions outside the built-in schemas."""

    def __init__(
        self, oid: int, columns: Sequence[ColumnRef], functions: frozenset[str] | None = None
    ) -> None:
        cols = tuple(columns)
        self.current = CatalogSnapshot(
            {(oid, i + 1): c for i, c in enumerate(cols)},
            {oid: cols},
            loaded_at=0.0,
            functions=functions,
        )

    def reload_soon(self) -> None:
        pass

    def reload_missing(self) -> None:
        self.reload_soon()

    def reload_if_old(self) -> None:
        pass


def row(*values: bytes | None) -> bytes:
    """A DataRow frame."""
    return DataRow(list(values)).encode()


def types(wire: bytes) -> str:
    """The type letters of the messages in ``wire``, in order."""
    return "".join(chr(m.type) for m in pgwire.split_frames(wire)[0])


def recording_to(sink: Callable[[str, str, dict[str, Any]], object]) -> RecordFn:
    """A ``record`` for hooks under test: each event's data made at once, as the
    recorder's writer would make it, and handed to ``sink``."""

    def record(session_id: str, kind: str, data: Any, build: Build | None = None, /) -> None:
        made = event_data(data, build, time.time_ns())
        if made is not None:
            sink(session_id, kind, dict(made))

    return record
