"""The prepared statements and portals of one client connection, kept once and in
step with what the server holds.

Guardrails, masking, the result limit and the recording all need to know which
text a Bind, a Describe or an Execute runs.  They used to keep a map each,
updated as the client's messages went by, which assumed that every Parse,
Bind and Close takes effect.  The server does not work that way: it refuses a
Parse whose name is taken (42P05) and keeps the statement it has, and after an
error it skips every message up to the next Sync.  A client could so make the
gateway believe one text while the server ran another (parse a statement,
parse a harmless one under the same name, run the name: masking planned the
result from the harmless text).  ``ConnectionState`` is the one table the
hooks read, and it keeps one invariant:

    Every statement or portal the state holds under a name is exactly the one
    the server holds under that name, or the server holds none.

A name the state does not hold may still be held by the server (an SQL
``PREPARE`` or ``DECLARE``, a Parse whose outcome the gateway could not tell):
the hooks refuse to run a statement the state does not know, and masking
treats an unknown portal as unknown.  How the invariant is kept:

* A Parse, Bind or Close takes effect in the table when the relay passes it
  on, as if it will succeed, so that the messages after it in the same
  pipeline see it; it is journalled until the server confirms it
  (ParseComplete, BindComplete, CloseComplete: the server answers in order).
* At the ReadyForQuery that ends a pipeline, its messages the server did not
  confirm failed or were skipped, and are undone, newest first.  Where undoing
  cannot tell what the server kept (an unnamed statement or portal that a
  failed or skipped message replaced: failed, the server dropped the old one;
  skipped, it kept it), the name is forgotten.
* A message that names a statement or portal whose last change is not yet
  confirmed, from an earlier pipeline (a client that pipelines past a Sync),
  waits (``must_wait``: the relay holds it and what follows) until that
  pipeline's ReadyForQuery: only then is it known which one the server uses.
* A named Parse or Bind whose name the state holds forgets the name instead
  of replacing it: the server refuses it, unless an SQL ``DEALLOCATE``, a
  ``DISCARD`` or the end of a transaction freed the name without the state
  seeing it.
* A simple Query drops the unnamed statement and portal, as the server does.
  The end of a transaction (ReadyForQuery ``I``) drops the portals of the
  pipelines it ended.

A hook that must keep something of its own about a statement or portal (the
guard's decision, masking's plan) attaches it to the entry with a typed
``Note`` rather than keeping a map by name, so that it lives and dies with the
entry.
"""

from __future__ import annotations

from collections import deque
from typing import Final, Generic, TypeVar, cast

__all__ = ["ConnectionState", "Note", "Portal", "Prepared"]

T = TypeVar("T")

_PARSE: Final = 80  # P
_BIND: Final = 66  # B
_CLOSE: Final = 67  # C
_DESCRIBE: Final = 68  # D
_EXECUTE: Final = 69  # E
_QUERY: Final = 81  # Q
# Server messages that confirm a Parse, a Bind, a Close.
COMPLETIONS: Final = b"123"
# Client messages the state reads.
CLIENT_TYPES: Final = b"PBCDEQ"
# Named portals kept at most: a client that binds a new name in every
# transaction without closing it must not grow the table for ever (a portal
# forgotten is one the gateway refuses to describe, never one it misreads).
MAX_PORTALS: Final = 1000


class Note(Generic[T]):
    """A typed key for what one hook keeps on an entry (``Entry.note``)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Note({self.name!r})"


class _Entry:
    __slots__ = ("_notes", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._notes: dict[object, object] = {}

    def note(self, key: Note[T]) -> T | None:
        """What the hook that owns ``key`` keeps on this entry, if anything."""
        return cast("T | None", self._notes.get(key))

    def annotate(self, key: Note[T], value: T) -> None:
        self._notes[key] = value


class Prepared(_Entry):
    """A statement a Parse named: its message body as it came (name, text,
    parameter types), the text decoded only when asked for."""

    __slots__ = ("body",)

    def __init__(self, name: str, body: bytes) -> None:
        super().__init__(name)
        self.body = body

    def __repr__(self) -> str:
        return f"Prepared({self.name!r})"


class Portal(_Entry):
    """A portal a Bind named, and the statement it bound, as it was then."""

    __slots__ = ("pipeline", "statement")

    def __init__(self, name: str, statement: Prepared | None, pipeline: int) -> None:
        super().__init__(name)
        self.statement = statement
        self.pipeline = pipeline  # the ReadyForQuery that ends the Bind's pipeline

    def __repr__(self) -> str:
        return f"Portal({self.name!r}, {self.statement!r})"


class _Op:
    """A Parse, Bind or Close in the table, not yet confirmed by the server."""

    __slots__ = ("key", "new", "old", "pipeline")

    def __init__(
        self, key: tuple[bool, str], new: _Entry | None, old: _Entry | None, pipeline: int
    ) -> None:
        self.key = key  # (a portal?, name)
        self.new = new  # what it put under the name (None: a Close)
        self.old = old  # what was there before
        self.pipeline = pipeline


def _cstring(body: bytes, start: int) -> tuple[str, int]:
    end = body.find(b"\0", start)
    if end < 0:
        end = len(body)
    # Hooks decode the same names strictly (and refuse invalid UTF-8); here a
    # name only has to be the same key for the same bytes.
    return body[start:end].decode("utf-8", "surrogateescape"), end + 1


class ConnectionState:
    """The table of one connection (see the module docstring).  Sans-IO: the relay
    calls ``client`` for each client message of ``CLIENT_TYPES`` it passes on,
    ``confirmed`` for each of ``COMPLETIONS`` and ``ready`` for each
    ReadyForQuery from the server."""

    def __init__(self) -> None:
        self.statements: dict[str, Prepared] = {}
        self.portals: dict[str, Portal] = {}
        self.status = "I"  # the transaction status of the server's last ReadyForQuery
        # What the message being handled put in the table, for its hooks.
        self.parsed: Prepared | None = None
        self.bound: Portal | None = None
        self._journal: deque[_Op] = deque()
        self._last: _Op | None = None  # what the message being handled journalled
        self._unsettled: dict[tuple[bool, str], _Op] = {}  # the latest op of each name

    @property
    def settling(self) -> bool:
        """Some Parse, Bind or Close awaits the server's word (the relay then watches
        the server's completions)."""
        return bool(self._journal)

    # -- client messages ---------------------------------------------------------------
    def must_wait(self, t: int, body: bytes, pipeline: int) -> bool:
        """Whether the client message must wait for an earlier pipeline's
        ReadyForQuery before it is read: it names a statement or portal whose last
        change that pipeline made and the server has not confirmed."""
        if not self._unsettled:
            return False
        for key in _names(t, body):
            op = self._unsettled.get(key)
            if op is not None and op.pipeline < pipeline:
                return True
        return False

    def client(self, t: int, body: bytes, pipeline: int) -> None:
        """A client message on its way to the server; ``pipeline``: the number of the
        ReadyForQuery that will end its pipeline."""
        self.parsed = None
        self.bound = None
        self._last = None
        if t == _PARSE:
            name = _cstring(body, 0)[0]
            prepared = Prepared(name, body)
            if self._put((False, name), prepared, self.statements, pipeline):
                self.parsed = prepared
        elif t == _BIND:
            portal_name, rest = _cstring(body, 0)
            portal = Portal(portal_name, self.statements.get(_cstring(body, rest)[0]), pipeline)
            if self._put((True, portal_name), portal, self.portals, pipeline):
                self.bound = portal
                if portal_name and len(self.portals) > MAX_PORTALS:
                    self._forget((True, next(iter(self.portals))))
        elif t == _CLOSE:
            of_portal = body[:1] != b"S"
            name = _cstring(body, 1)[0]
            table: dict[str, Prepared] | dict[str, Portal] = (
                self.portals if of_portal else self.statements
            )
            old = table.pop(name, None)
            if old is not None:
                self._journal_op(_Op((of_portal, name), None, old, pipeline))
        elif t == _QUERY:
            # The server drops both before it runs a simple Query.
            self.statements.pop("", None)
            self.portals.pop("", None)

    def withdrawn(self) -> None:
        """The message just passed to ``client`` does not reach the server after all
        (a hook dropped it): what it put in the table is taken back at once."""
        op = self._last
        if op is not None and self._journal and self._journal[-1] is op:
            self._journal.pop()
            self._undo(op)
        self._last = None
        self.parsed = None
        self.bound = None

    def _put(
        self,
        key: tuple[bool, str],
        entry: Prepared | Portal,
        table: dict[str, Prepared] | dict[str, Portal],
        pipeline: int,
    ) -> bool:
        name = key[1]
        old = table.get(name)
        if old is not None and name:
            # Taken: the server refuses it, or (the name freed where the state
            # could not see it) takes it; either way the old one is not known to be
            # what the name stands for any more.
            self._forget(key)
            return False
        table[name] = entry  # type: ignore[assignment]
        self._journal_op(_Op(key, entry, old, pipeline))
        return True

    def _journal_op(self, op: _Op) -> None:
        self._last = op
        self._journal.append(op)
        self._unsettled[op.key] = op

    def _forget(self, key: tuple[bool, str]) -> None:
        if key[0]:
            self.portals.pop(key[1], None)
        else:
            self.statements.pop(key[1], None)

    # -- server messages --------------------------------------------------------------
    def confirmed(self) -> None:
        """ParseComplete, BindComplete or CloseComplete: the oldest journalled
        message took effect."""
        if self._journal:
            self._settle(self._journal.popleft())

    def ready(self, number: int, status: bytes) -> None:
        """The server's ReadyForQuery ``number`` (the relay's count), with its
        transaction status."""
        journal = self._journal
        if journal and journal[0].pipeline <= number:
            # Not confirmed by the end of their pipeline: failed, or skipped after
            # an error.  Undone newest first, so that a Close restores what it closed.
            failed = [op for op in journal if op.pipeline <= number]
            for op in reversed(failed):
                self._undo(op)
            self._journal = deque(op for op in journal if op.pipeline > number)
        self.status = status[:1].decode("ascii", "replace") or "I"
        if self.status == "I" and self.portals:
            # The transaction ended, and the portals of its pipelines with it.
            for name in [n for n, p in self.portals.items() if p.pipeline <= number]:
                del self.portals[name]

    def _settle(self, op: _Op) -> None:
        if self._unsettled.get(op.key) is op:
            del self._unsettled[op.key]

    def _undo(self, op: _Op) -> None:
        self._settle(op)
        portal, name = op.key
        table: dict[str, Prepared] | dict[str, Portal] = self.portals if portal else self.statements
        if op.new is None:  # a Close that did not happen
            if op.old is not None and name not in table:
                table[name] = op.old  # type: ignore[assignment]
        elif table.get(name) is op.new:
            # A named one was not taken (the server has none by that name); an
            # unnamed one either failed (the server dropped the old one) or was
            # skipped (it kept it): not known, so forgotten.
            del table[name]


def _names(t: int, body: bytes) -> tuple[tuple[bool, str], ...]:
    """The statements and portals a client message names, as (a portal?, name)."""
    if t == _PARSE:
        return ((False, _cstring(body, 0)[0]),)
    if t == _BIND:
        portal, rest = _cstring(body, 0)
        return ((True, portal), (False, _cstring(body, rest)[0]))
    if t == _EXECUTE:
        return ((True, _cstring(body, 0)[0]),)
    if t in (_DESCRIBE, _CLOSE):
        return ((body[:1] != b"S", _cstring(body, 1)[0]),)
    return ()
