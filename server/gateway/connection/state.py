"""The prepared statements and portals of one client connection, kept once and in
step with what the server holds.

Guardrails, masking, the result limit and the recording all need to know which
text a Bind, a Describe or an Execute runs.  They used to keep a map each,
updated as the client's messages went by, which assumed that every Parse,
Bind and Close takes effect.  The server does not work that way: it refuses a
Parse whose name is taken (42P05) and keeps the statement it has, after an
error it skips every message up to the next Sync, it cuts names to 63 bytes,
and SQL (``PREPARE``, ``DEALLOCATE``, ``DECLARE``, ``CLOSE``, ``DISCARD``)
changes the same names.  A client could so make the gateway believe one text
while the server ran another, and masking planned the result from the wrong
one.  ``ConnectionState`` is the one table the hooks read, and it keeps one
invariant:

    Every statement or portal the state holds under a name is exactly the one
    the server holds under that name, or the server holds none.

A name the state does not hold may still be held by the server: the hooks
refuse to run a statement the state does not know, and masking treats an
unknown portal as unknown.  How the invariant is kept:

* Names are keyed as the server keys them: their first 63 bytes.
* Every message sent upstream that the server answers (Parse, Bind, Close,
  Describe, Execute, Sync, Query, FunctionCall; the client's and the
  gateway's own) is journalled in order, and every answer the server sends is
  matched to the head of the journal, as the server answers in order: a
  ParseComplete, BindComplete or CloseComplete confirms its message; a
  RowDescription or NoData ends a Describe; a CommandComplete,
  EmptyQueryResponse or PortalSuspended an Execute; a ReadyForQuery a Sync, a
  Query or a FunctionCall.  An answer that does not fit the head means the
  gateway no longer knows where it is, and the connection is ended
  (``ProtocolViolation``) rather than guessed on.
* A Parse, Bind or Close takes effect in the table as it goes by, so that the
  messages after it see it, and is undone if the server says otherwise: an
  ErrorResponse to an extended-protocol message fails it and skips every
  message after it up to the next Sync, exactly as the server does.  A skipped
  message is undone to what was there before; a failed unnamed Parse or Bind
  leaves nothing (the server dropped the old one first, or may have).
* COPY FROM STDIN: while the server copies in, it reads what the client
  sends as part of the COPY: a Sync is ignored (not answered), a CopyDone or
  CopyFail ends the COPY.  Any other message there ends the connection
  (``ProtocolViolation``): PostgreSQL ends it too, or runs the message if the
  COPY had already failed, which the gateway cannot tell.  What was sent before
  the CopyInResponse came is read that way when it comes, what is sent after as
  it goes by.
* A Sync, Query or FunctionCall already sent that will never be answered (a
  Sync a COPY read, a Query or FunctionCall skipped after an error) is
  reported (by ``server``), and each ReadyForQuery names what it answers
  (``answered``), so that the relay's counts and masking's queue pass over
  it.
* A message that uses a statement or portal (a Bind's statement, what a
  Describe or an Execute names) whose last change the server has not answered
  yet, and that belongs to a later pipeline (a Sync between them), waits
  (``must_wait``: the relay holds it and what follows) until the server
  answers that change: until then it is not known which one the server will
  use.  The change is answered before the Sync after it, so the wait ends.  A
  message that only replaces or drops a name (a Parse, a Bind's portal, a
  Close) need not wait.
* SQL that changes the names (``forget``, called by the guard, which reads
  it) makes the state forget them as the statement goes by, before it runs
  (forgetting early only makes a name unknown), and what an unanswered
  message would give back under them if undone.
* A simple Query drops the unnamed statement and portal, as the server does;
  the end of a transaction (ReadyForQuery ``I``) drops every portal already
  bound.

A hook that must keep something of its own about a statement or portal (the
guard's decision, masking's plan) attaches it to the entry with a typed
``Note`` rather than keeping a map by name, so that it lives and dies with the
entry.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Final, Generic, NoReturn, TypeVar, cast

from server.gateway.pgwire import ProtocolViolation

__all__ = ["ConnectionState", "Note", "Portal", "Prepared"]

T = TypeVar("T")

# Client message types (and the gateway's own messages upstream).
_PARSE: Final = 80  # P
_BIND: Final = 66  # B
_CLOSE: Final = 67  # C
_DESCRIBE: Final = 68  # D
_EXECUTE: Final = 69  # E
_SYNC: Final = 83  # S
_QUERY: Final = 81  # Q
_FUNCTION_CALL: Final = 70  # F
_COPY_DONE: Final = 99  # c
_COPY_FAIL: Final = 102  # f
_COPY_END: Final = -1  # the journal's mark of a CopyDone or CopyFail
# Client messages the state reads, and those that use a statement or portal.
CLIENT_TYPES: Final = b"PBCDESQFcf"
NAMING_TYPES: Final = b"BDE"
# Server messages the state reads: what ends or fails the head's answer.
SERVER_TYPES: Final = b"123tTnCIsGHWVEZ"
# The server keys statement and portal names by their first NAMEDATALEN - 1 bytes.
NAME_BYTES: Final = 63
# Named portals kept at most: a client that binds a new name in every
# transaction block without closing it must not grow the table for ever (a
# portal forgotten is one the gateway does not know, never one it misreads).
MAX_PORTALS: Final = 1000


class Note(Generic[T]):
    """A typed key for what one hook keeps on an entry (``Entry.note``)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Note({self.name!r})"


class _Entry:
    __slots__ = ("_notes", "key", "void")

    _notes: dict[object, object] | None
    key: bytes
    void: bool  # the message that made it did not take effect

    def note(self, key: Note[T]) -> T | None:
        """What the hook that owns ``key`` keeps on this entry, if anything."""
        notes = self._notes
        return None if notes is None else cast("T | None", notes.get(key))

    def annotate(self, key: Note[T], value: T) -> None:
        if self._notes is None:
            self._notes = {}
        self._notes[key] = value


class Prepared(_Entry):
    """A statement a Parse named: its message body as it came (name, text,
    parameter types)."""

    __slots__ = ("body", "forgets")

    def __init__(self, key: bytes, body: bytes) -> None:
        self.key = key
        self.body = body
        self._notes = None
        self.void = False
        # What running it does to other names (``ConnectionState.forgets_when_run``).
        self.forgets: tuple[tuple[str, ...] | None, bool] | None = None

    def __repr__(self) -> str:
        return f"Prepared({self.key!r})"


class Portal(_Entry):
    """A portal a Bind named, and the statement it bound, as it was then."""

    __slots__ = ("pending", "statement")

    def __init__(self, key: bytes, statement: Prepared | None) -> None:
        self.key = key
        self.statement = statement
        self.pending = True  # its Bind is not answered yet
        self._notes = None
        self.void = False

    def __repr__(self) -> str:
        return f"Portal({self.key!r}, {self.statement!r})"


class _Op:
    """What a Parse, Bind or Close did to the table, until the server answers it."""

    __slots__ = ("group", "key", "new", "old", "portal")

    def __init__(
        self, portal: bool, key: bytes, new: _Entry | None, old: _Entry | None, group: int
    ) -> None:
        self.portal = portal
        self.key = key
        self.new = new  # what it put under the name (None: a Close)
        self.old = old  # what was there before
        self.group = group  # the Syncs sent before it


def _name(body: bytes, start: int) -> tuple[bytes, int]:
    """The name at ``start`` as the server keys it, and where the next field starts."""
    end = body.find(b"\0", start)
    if end < 0:
        end = len(body)
    return body[start : min(end, start + NAME_BYTES)], end + 1


def key_of(name: str) -> bytes:
    """A name as the hooks decoded it, as the state keys it."""
    return name.encode("utf-8", "surrogateescape")[:NAME_BYTES]


# A journal entry taken out by ``postpone``: the message's type and its op.
PostponedEntry = tuple[int, "_Op | None"]


class ConnectionState:
    """The table of one connection (see the module docstring).  Sans-IO: the relay
    calls ``client`` for each message of ``CLIENT_TYPES`` the client sends on,
    ``sent`` for the messages the gateway sends upstream itself, and ``server``
    for each server message of ``SERVER_TYPES``."""

    def __init__(self) -> None:
        self._statements: dict[bytes, Prepared] = {}
        self._portals: dict[bytes, Portal] = {}
        # What the message being handled put in the table, for its hooks.
        self.parsed: Prepared | None = None
        self.bound: Portal | None = None
        # Every message upstream the server has yet to answer, oldest first: its
        # type, and the op of a Parse, Bind or Close.
        self._journal: deque[tuple[int, _Op | None]] = deque()
        self._last: tuple[int, _Op | None] | None = None  # the client message just journalled
        self._unanswered: dict[tuple[bool, bytes], _Op] = {}  # the latest op of each name
        self._groups = 0  # Syncs journalled
        self._copying = False  # the server copies in; the client has not ended it yet
        # The server skips what comes up to the next Sync (after an error), and the
        # journal holds no Sync for it to stop at: what is sent now is skipped.
        self._ignoring = False
        # Whether the last ErrorResponse answered an extended-protocol message (the
        # server then skips to the next Sync) rather than a Query, a FunctionCall
        # or a Sync: for hooks that keep queues of their own (masking's).
        self.extended_error = False
        # Whether the client message just handled was journalled (False: the
        # server skips it, or the COPY reads it): its hooks expect no answer.
        self.journalled = True
        # The Sync, Query or FunctionCall the last ReadyForQuery answered (an
        # ``entry``), for hooks that keep queues of their own.
        self.answered: object = None
        self._dropped = 0  # Syncs, Queries, FunctionCalls sent that will never be answered

    # -- reading ------------------------------------------------------------------------
    def statement(self, name: str) -> Prepared | None:
        return self._statements.get(key_of(name)) if self._statements else None

    def portal(self, name: str) -> Portal | None:
        return self._portals.get(key_of(name)) if self._portals else None

    def portal_at(self, key: bytes) -> Portal | None:
        """A portal by its name's bytes, as a message carries them."""
        return self._portals.get(key[:NAME_BYTES]) if self._portals else None

    def prepared(self) -> Iterator[Prepared]:
        return iter(self._statements.values())

    @property
    def watching(self) -> bool:
        """Whether the server's answers tell the state anything now (else the relay
        need not show them)."""
        return bool(self._journal or self._portals)

    # -- client messages ---------------------------------------------------------------
    def must_wait(self, t: int, body: bytes) -> bool:
        """Whether the client message must wait before it is read: it names a
        statement or portal whose last change, sent before a Sync the client
        sent since, the server has not answered."""
        unanswered = self._unanswered
        if not unanswered or self._copying:
            # While the server copies in, what the client sends is copy data to
            # it (anything else ends the COPY in an error and is not run).
            return False
        groups = self._groups
        for name in _names(t, body):
            op = unanswered.get(name)
            if op is not None and op.group < groups:
                return True
        return False

    def client(self, t: int, body: bytes) -> None:
        """A client message on its way upstream, as it came (a hook may still
        replace it by one of the same type, or drop it: ``withdrawn``)."""
        self.parsed = None
        self.bound = None
        op: _Op | None = None
        if t == _PARSE:
            key = _name(body, 0)[0]
            prepared = Prepared(key, body)
            op = self._put(False, key, prepared, self._statements)
            self.parsed = prepared
        elif t == _BIND:
            key, rest = _name(body, 0)
            statements = self._statements
            statement = statements.get(_name(body, rest)[0]) if statements else None
            portal = Portal(key, statement)
            op = self._put(True, key, portal, self._portals)
            self.bound = portal
            if key and len(self._portals) > MAX_PORTALS:
                oldest = next(iter(self._portals))
                if oldest != key:
                    del self._portals[oldest]
        elif t == _CLOSE:
            of_portal = body[:1] != b"S"
            key = _name(body, 1)[0]
            table = self._table(of_portal)
            op = _Op(of_portal, key, None, table.pop(key, None), self._groups)
            self._unanswered[(of_portal, key)] = op
        elif t == _SYNC:
            pass
        elif t == _QUERY:
            # The server drops both before it runs a simple Query.
            if self._statements:
                self._statements.pop(b"", None)
            if self._portals:
                self._portals.pop(b"", None)
        elif t in (_COPY_DONE, _COPY_FAIL):
            if not self._journal:
                return  # nothing is copying: the server ignores it
            t = _COPY_END  # ends a COPY, maybe one whose CopyInResponse is yet to come
        elif t == _EXECUTE:
            running = self._portals.get(_name(body, 0)[0]) if self._portals else None
            if running is not None and running.statement is not None:
                forgets = running.statement.forgets
                if forgets is not None:
                    self.forget(forgets[0], portals=forgets[1])
        elif t != _DESCRIBE and t != _FUNCTION_CALL:
            return
        entry = (t, op)
        self._last = None
        self.journalled = self._journal_entry(entry)
        if self.journalled:
            self._last = entry

    def _journal_entry(self, entry: tuple[int, _Op | None]) -> bool:
        """Journal a message sent upstream; False: the server skips it (see
        ``_ignoring``), and what it did is undone at once."""
        t, op = entry
        if self._copying:
            # The server copies in and reads it as part of the COPY: a Sync is
            # ignored, a CopyDone or CopyFail ends the COPY.  Anything else would
            # end the connection there (protocol synchronization lost), or run
            # after all if the COPY already failed: not something to guess about.
            if t == _COPY_END:
                self._copying = False
            elif t != _SYNC:
                raise ProtocolViolation(f"message type {chr(t)!r} sent in the middle of COPY data")
            return False
        if self._ignoring:
            if t != _SYNC:
                if op is not None:
                    self._undo(op, failed=False)
                return False
            self._ignoring = False
        self._journal.append(entry)
        if t == _SYNC:
            self._groups += 1
        return True

    def sent(self, types: Iterable[int]) -> None:
        """Messages the gateway sends upstream of its own accord (a detour's, a
        cut's), of these types, in order: their answers are the server's too."""
        for t in types:
            if t in (_PARSE, _BIND, _CLOSE, _DESCRIBE, _EXECUTE, _QUERY, _FUNCTION_CALL, _SYNC):
                self._journal_entry((t, None))

    def postpone(self) -> PostponedEntry | None:
        """The client message just passed to ``client`` goes upstream later (a hook
        holds it for a detour, whose own messages go first): its place in the
        journal is taken out, to be given back with ``resume``."""
        last = self._last
        if last is None or not self._journal or self._journal[-1] is not last:
            return None
        self._journal.pop()
        if last[0] == _SYNC:
            self._groups -= 1
        self._last = None
        return last

    def resume(self, entry: PostponedEntry | None) -> None:
        """The message ``postpone`` took out goes upstream now."""
        if entry is not None:
            self._journal_entry(entry)

    def dropped(self, entry: PostponedEntry | None) -> None:
        """The message ``postpone`` took out never goes upstream: what it did is
        taken back."""
        if entry is not None and entry[1] is not None:
            self._undo(entry[1], failed=False)

    @property
    def entry(self) -> object:
        """The journal entry of the client message just handled, for hooks that
        keep queues of their own (compared with ``answered``)."""
        return self._last

    def withdrawn(self) -> None:
        """The client message just passed to ``client`` does not reach the server
        after all (a hook dropped it): what it did is taken back."""
        last = self._last
        if last is not None and self._journal and self._journal[-1] is last:
            self._journal.pop()
            if last[0] == _SYNC:
                self._groups -= 1
            if last[1] is not None:
                self._undo(last[1], failed=False)
        self._last = None
        self.parsed = None
        self.bound = None

    def forget(self, statements: Iterable[str] | None = (), *, portals: bool = False) -> None:
        """SQL the client sends changes these statements (None: every named one) or,
        with ``portals``, any named portal."""
        keys: set[bytes] | None = None
        if statements is None:
            for key in [k for k in self._statements if k]:
                del self._statements[key]
        else:
            keys = {key_of(name) for name in statements}
            for key in keys:
                self._statements.pop(key, None)
        if portals:
            for key in [k for k in self._portals if k]:
                del self._portals[key]
        # What messages not yet answered would give back if undone is not what the
        # name stands for any more either.
        for _t, op in self._journal:
            if op is None or op.old is None or not op.key:
                continue
            if (op.portal and portals) or (not op.portal and (keys is None or op.key in keys)):
                op.old = None

    def forgets_when_run(
        self, prepared: Prepared, statements: Iterable[str] | None, *, portals: bool
    ) -> None:
        """The statement ``prepared`` holds SQL that changes these names (as
        ``forget``), each time an Execute runs it: forgotten as the Execute goes by."""
        prepared.forgets = (None if statements is None else tuple(statements), portals)

    def _table(self, portal: bool) -> dict[bytes, Prepared] | dict[bytes, Portal]:
        return self._portals if portal else self._statements

    def _put(
        self,
        portal: bool,
        key: bytes,
        entry: Prepared | Portal,
        table: dict[bytes, Prepared] | dict[bytes, Portal],
    ) -> _Op:
        op = _Op(portal, key, entry, table.get(key), self._groups)
        table[key] = entry  # type: ignore[assignment]
        self._unanswered[(portal, key)] = op
        return op

    # -- server messages --------------------------------------------------------------
    def server(self, t: int, body: bytes) -> int:
        """A server message of ``SERVER_TYPES``, in the order the server sent it.
        Returns how many Syncs, Queries and FunctionCalls already sent the server
        will not answer after all, learnt from it (a COPY read them, an error
        skipped them): the relay counts them answered."""
        journal = self._journal
        if not journal:
            if t == 69 or t == 90:
                return 0  # an error of its own (a FATAL), or a stray ReadyForQuery
            self._lost(t, None)
        head = journal[0][0]
        if head == _QUERY:
            if t == 90:
                self.answered = journal.popleft()
                self._ready(body)
                self._skip_marks()
            elif t == 69:  # E: the Query's own; a COPY in it, if any, is over
                self.extended_error = False
                self._copying = False
            elif t == 67:  # C: a COPY in it, if any, is over
                self._copying = False
            elif t == 71:  # G: COPY FROM STDIN
                self._copy_in()
                return self._take_dropped()
            return 0  # everything else is part of the Query's answer
        if t == 49:  # 1
            self._answered(_PARSE, t)
        elif t == 50:  # 2
            self._answered(_BIND, t)
        elif t == 51:  # 3
            self._answered(_CLOSE, t)
        elif t == 84 or t == 110:  # T, n
            self._answered(_DESCRIBE, t)
        elif t == 67 or t == 73 or t == 115:  # C, I, s
            self._answered(_EXECUTE, t)
        elif t == 116:  # t: the first part of a statement's Describe
            if head != _DESCRIBE:
                self._lost(t, head)
        elif t == 71 or t == 72 or t == 87:  # G, H, W: COPY under an Execute
            if head != _EXECUTE:
                self._lost(t, head)
            if t == 71:
                self._copy_in()
        elif t == 86:  # V
            if head != _FUNCTION_CALL:
                self._lost(t, head)
        elif t == 69:  # E
            self.extended_error = head in (_PARSE, _BIND, _CLOSE, _DESCRIBE, _EXECUTE)
            if self.extended_error:
                self._failed()
            # A Sync's or a FunctionCall's error: their ReadyForQuery follows.
        elif t == 90:  # Z
            if head != _SYNC and head != _FUNCTION_CALL:
                self._lost(t, head)
            self.answered = journal.popleft()
            self._ready(body)
        self._skip_marks()
        return self._take_dropped() if self._dropped else 0

    def _take_dropped(self) -> int:
        dropped, self._dropped = self._dropped, 0
        return dropped

    def _answered(self, kind: int, t: int) -> None:
        head, op = self._journal[0]
        if head != kind:
            self._lost(t, head)
        self._journal.popleft()
        if op is not None:
            self._settle(op)

    def _settle(self, op: _Op) -> None:
        name = (op.portal, op.key)
        if self._unanswered.get(name) is op:
            del self._unanswered[name]
        if op.portal and isinstance(op.new, Portal):
            op.new.pending = False

    def _failed(self) -> None:
        """An ErrorResponse to the head, an extended-protocol message: it failed, and
        the server skips every message after it up to the next Sync."""
        journal = self._journal
        op = journal.popleft()[1]
        skipped: list[_Op] = []
        while journal and journal[0][0] != _SYNC:
            t, later = journal.popleft()
            if later is not None:
                skipped.append(later)
            elif t in (_QUERY, _FUNCTION_CALL):
                self._dropped += 1  # sent, and never to be answered
        for later in reversed(skipped):
            self._undo(later, failed=False)
        if op is not None:
            self._undo(op, failed=True)
        self._copying = False
        # No Sync sent yet: whatever is sent before it is skipped too.
        self._ignoring = not journal

    def _undo(self, op: _Op, *, failed: bool) -> None:
        self._settle(op)
        table = self._table(op.portal)
        key = op.key
        # What it replaced is given back, unless that never took effect either (a
        # message not answered when this one was sent, since undone): then what
        # the server holds is not known.
        old = op.old if op.old is not None and not op.old.void else None
        if op.new is None:  # a Close that did not happen
            if key not in table and old is not None:
                table[key] = old  # type: ignore[assignment]
            return
        op.new.void = True
        if table.get(key) is op.new:
            if failed and not key:
                # A failed unnamed Parse dropped the old statement first; a failed
                # unnamed Bind may have dropped the old portal: nothing is known.
                del table[key]
            elif old is not None:
                table[key] = old  # type: ignore[assignment]
            else:
                del table[key]

    def _ready(self, body: bytes) -> None:
        self._copying = False
        if self._portals and body[:1] == b"I":
            # The transaction ended, and every portal bound in it with it.
            for key in [k for k, p in self._portals.items() if not p.pending]:
                del self._portals[key]

    def _copy_in(self) -> None:
        """The server copies in (CopyInResponse): what was sent after the head
        before it came is read by the COPY, as ``_journal_entry`` says, up to the
        message that ends it; the rest stays."""
        rest = list(self._journal)
        self._journal = deque(rest[:1])
        self._copying = True
        for entry in rest[1:]:
            if self._copying:
                self._journal_entry(entry)  # read by the COPY
                if entry[0] == _SYNC:
                    self._dropped += 1  # sent, and never to be answered
            else:
                self._journal.append(entry)

    def _skip_marks(self) -> None:
        journal = self._journal
        while journal and journal[0][0] == _COPY_END:
            journal.popleft()

    def _lost(self, t: int, head: int | None) -> NoReturn:
        due = "nothing" if head is None else repr(chr(head) if head >= 0 else "CopyDone")
        raise ProtocolViolation(
            f"the server's {chr(t)!r} does not answer what the gateway sent ({due} was due): "
            "the gateway cannot tell which statements the session holds"
        )


def _names(t: int, body: bytes) -> tuple[tuple[bool, bytes], ...]:
    """The statements and portals whose contents a client message uses, as (a
    portal?, key): a Bind's statement, a Describe's or an Execute's target.  A
    Parse, a Bind's portal or a Close replaces or drops the name whatever it
    held, so they need not know."""
    if t == _BIND:
        return ((False, _name(body, _name(body, 0)[1])[0]),)
    if t == _EXECUTE:
        return ((True, _name(body, 0)[0]),)
    if t == _DESCRIBE:
        return ((body[:1] != b"S", _name(body, 1)[0]),)
    return ()
