"""DataRow rewriting: :class:`RowMasker`, a loop generated per plan, and its C core.

:class:`RowMasker` (``plan.masker(formats)``, cached per formats) rewrites
DataRow messages.  It walks only the length words up to the last masked column
(``struct.unpack_from`` on the buffer, no copies), copies everything unmasked as
slices of the original bytes, and leaves the final copy to one ``b"".join`` per
batch.  :meth:`RowMasker.rewrite_rows` works directly on the wire bytes of many
messages (what the relay's framing hands over), stopping at the first message
that is not a DataRow.  The per-plan loop is generated once, unrolled for the
masked positions and with each method's common case inline (a generic loop over
the columns costs about half as much again per row, see ``bench/masking.py``); a
row with a value off that path (NULL, too short to keep characters from, a
non-ASCII tail, no ``@``) is decoded, masked by :func:`mask_bytes` and encoded
again.

Where the C core ``server.gateway._rowmask`` was built (:data:`NATIVE`), a plan
without a ``hash`` column runs its rows through it instead
(``RowMasker.native``): the same walk in C, writing a whole run into one bytes
object, and handing every row it does not take to the generated loop for that
row, so the bytes and the errors are the same either way
(``tests/server/gateway/test_masking_native.py``).  The masker reads its plan
through ``_Plan``, which ``plans.MaskPlan`` is.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Final, Protocol

from server.gateway.masking.rules import REDACTED, TEXT_LIKE_TYPES, TEXT_OID, hash_value, mask_value
from server.gateway.pgwire import BINARY, TEXT, ProtocolViolation
from server.gateway.pgwire import DataRow as _DataRowMessage
from server.policy.model import (
    MaskMethod,
    MaskRule,
)

_INT32 = struct.Struct("!i")
_HEADER = struct.Struct("!BI")
_DATA_ROW: Final = ord("D")
_STARS: Final = REDACTED.encode()
_REDACTED_VALUE: Final = (_INT32.pack(len(_STARS)) + _STARS,)
_NULL_VALUE: Final = (b"\xff\xff\xff\xff",)


def mask_bytes(
    rule: MaskRule, key: bytes, value: bytes | None, *, fmt: int = TEXT, type_oid: int = TEXT_OID
) -> bytes | None:
    """One wire value as ``rule`` shows it (None is NULL): the reference for the fast path.

    Text values are UTF-8 (the gateway pins client_encoding), so masking their
    text and encoding it again gives back valid UTF-8; ``surrogateescape`` only
    makes sure nothing is lost should a value not be.  Hashes are over the bytes.
    """
    if value is None:
        return None
    method = rule.method
    if method is MaskMethod.REDACT:
        return _STARS
    if method is MaskMethod.NULL or (fmt == BINARY and type_oid not in TEXT_LIKE_TYPES):
        # partial and hash need the text a binary value of this type does not give.
        return None
    if method is MaskMethod.HASH:
        return hash_value(key, value, rule.hash_length).encode()
    masked = mask_value(rule, key, value.decode("utf-8", "surrogateescape"))
    return None if masked is None else masked.encode("utf-8", "surrogateescape")


# The generated loop.  Per DataRow it reads the header and column count in one
# unpack, walks the length words up to the last masked column, and, when every
# masked value takes its common path (not NULL, long enough, an ASCII tail, an
# '@' to keep the domain from), emits the row with one ``extend``: the new
# header, the unmasked stretches as slices of the input, the new values between
# them.  Any other row goes to ``slow_row``, which decodes and re-encodes it.
_ROW_TEMPLATE = """\
def {name}(buf, pos, out):
    end = len(buf)
    extend = out.extend
    {loop} end - pos >= 7:
        kind, length, columns = header(buf, pos)
        stop = pos + 1 + length
        if kind != 68 or stop > end:
            return pos
        if columns != count:
            bad_count(buf, pos)
        p = pos + 7
        d = 0
        while True:
{walk}
            if p > stop:
                overrun()
            extend((pack_header(68, length + d), buf[pos + 5:s0]{pieces}, buf[p:stop]))
            break
        pos = stop{after}
    if end - pos >= 5 and buf[pos] == 68:
        short_row(buf, pos, end)
    return pos
"""

_SKIP = """\
            n, = unpack(buf, p)
            p += 4 + n if n > 0 else 4
"""

# Each masked column: s{i} is where its length word starts, p ends up after its
# value.  A value off the common path hands the row to slow_row and leaves the
# one-pass "while True" that only exists to be left this way.
_SLOW = """\
                slow_row(buf, pos, stop, out)
                break
"""

_CODE_CONST = """\
            n, = unpack(buf, p)
            if n < 0:
{slow}
            s{i} = p
            p += 4 + n
            d += {size} - n
"""

_CODE_HASH = """\
            n, = unpack(buf, p)
            if n < 0:
{slow}
            s{i} = p
            p += 4 + n
            h{i} = digest(key, buf[p - n:p], "sha256").hex()[:{size}].encode()
            d += {size} - n
"""

_CODE_KEEP_LAST = """\
            n, = unpack(buf, p)
            if n <= {keep}:
{slow}
            s{i} = p
            p += 4 + n
            t{i} = buf[p - {keep}:p]
            if not t{i}.isascii():
{slow}
            d += {size} - n
"""

_CODE_DOMAIN = """\
            n, = unpack(buf, p)
            if n < 0:
{slow}
            s{i} = p
            p += 4 + n
            a{i} = buf.rfind(b"@", s{i} + 5, p)
            m{i} = 3 + p - a{i}
            if a{i} < 0 or m{i} > 255:
{slow}
            d += m{i} - n
"""

_HEADER_COUNT = struct.Struct("!BIH")
# The C core (server/gateway/_rowmask.c), where it was built.
_rowmask: ModuleType | None
try:
    from server.gateway import _rowmask as _core

    _rowmask = _core
except ImportError:  # pragma: no cover - no compiler where the package was installed
    _rowmask = None
NATIVE: Final = _rowmask is not None
# The C core's column kinds (the same numbers as in _rowmask.c).
_CONST, _KEEP_LAST, _DOMAIN = 0, 1, 2
# Length word and "***" for every new value size below 256 (the domain is kept after it).
_STARS_BY_SIZE: Final = tuple(_INT32.pack(size) + _STARS for size in range(256))


def _column_kind(rule: MaskRule, fmt: int, type_oid: int) -> tuple[str, bytes | int]:
    """How one masked column is rewritten: ("const", the whole new value with its
    length word), ("hash", digits), ("domain", 0) or ("keep", characters kept)."""
    method = rule.method
    if method is MaskMethod.NULL or (
        fmt == BINARY and type_oid not in TEXT_LIKE_TYPES and method is not MaskMethod.REDACT
    ):
        return "const", _NULL_VALUE[0]
    if method is MaskMethod.HASH:
        return "hash", rule.hash_length
    if method is MaskMethod.PARTIAL and rule.keep_domain:
        return "domain", 0
    if method is MaskMethod.PARTIAL:
        return "keep", rule.keep_last or 0
    return "const", _REDACTED_VALUE[0]


def _column_code(
    i: int, kind: str, param: bytes | int, names: dict[str, object]
) -> tuple[str, str]:
    """The generated lines that mask one column, and the pieces that stand for its value.

    The pieces follow the stretch before the column (``buf[e:s{i}]``), where
    ``e`` is where the previous masked value ended.
    """
    if kind == "const":
        assert isinstance(param, bytes)
        names[f"c{i}"] = param
        return _CODE_CONST.format(i=i, size=len(param) - 4, slow=_SLOW), f", c{i}"
    assert isinstance(param, int)
    if kind == "hash":
        names[f"w{i}"] = _INT32.pack(param)
        return _CODE_HASH.format(i=i, size=param, slow=_SLOW), f", w{i}, h{i}"
    if kind == "domain":
        return _CODE_DOMAIN.format(i=i, slow=_SLOW), f", stars[m{i}], buf[a{i}:e{i}]"
    names[f"w{i}"] = _INT32.pack(3 + param) + _STARS
    code = _CODE_KEEP_LAST.format(i=i, keep=param, size=3 + param, slow=_SLOW)
    return code, f", w{i}, t{i}"


class _Field(Protocol):
    """What a :class:`RowMasker` reads of one column's plan (``plans.FieldPlan``)."""

    @property
    def name(self) -> str: ...
    @property
    def rule(self) -> MaskRule | None: ...
    @property
    def type_oid(self) -> int: ...


class _Plan(Protocol):
    """What a :class:`RowMasker` reads of its plan (``plans.MaskPlan``)."""

    @property
    def fields(self) -> Sequence[_Field]: ...
    @property
    def key(self) -> bytes: ...
    @property
    def masked(self) -> tuple[int, ...]: ...
    def unmaskable(self, formats: Sequence[int]) -> _Field | None: ...


class RowMasker:
    """Rewrites the DataRows of one result shape (a plan and the rows' format codes).

    ``native`` says whether runs of rows go through the C core
    (``server.gateway._rowmask``; ``NATIVE`` says whether it was built), which
    every plan without a ``hash`` column does unless ``native=False`` is asked.
    """

    def __init__(
        self, plan: _Plan, formats: tuple[int, ...], *, native: bool | None = None
    ) -> None:
        self.plan = plan
        self.formats = formats
        self.count = len(plan.fields)
        self.identity = not plan.masked
        # A column that needs its text but comes in binary: the relay refuses
        # such rows; this masker would send NULL for them.
        self.unmaskable = plan.unmaskable(formats)
        self.native = False
        self._rewrite = self._compile(NATIVE if native is None else native)

    def _compile(self, native: bool) -> Callable[[bytes, int, list[bytes]], int]:
        names: dict[str, object] = {
            "header": _HEADER_COUNT.unpack_from,
            "pack_header": _HEADER.pack,
            "unpack": _INT32.unpack_from,
            "digest": hmac.digest,
            "key": self.plan.key,
            "count": self.count,
            "stars": _STARS_BY_SIZE,
            "bad_count": self._bad_count,
            "slow_row": self._slow_row,
            "short_row": _short_row,
            "overrun": _overrun,
        }
        walk: list[str] = []
        pieces: list[str] = []
        columns: list[tuple[int, int, bytes, int]] = []
        column = 0
        for i, index in enumerate(self.plan.masked):
            plan = self.plan.fields[index]
            assert plan.rule is not None
            walk.extend(_SKIP for _ in range(index - column))
            column = index + 1
            kind, param = _column_kind(plan.rule, self.formats[index], plan.type_oid)
            code, value = _column_code(i, kind, param, names)
            walk.append(code)
            walk.append(f"            e{i} = p\n")
            if i:
                pieces.append(f", buf[e{i - 1}:s{i}]")
            pieces.append(value)
            if isinstance(param, bytes):
                columns.append((index, _CONST, param, 0))
            elif kind == "keep":
                columns.append((index, _KEEP_LAST, _INT32.pack(3 + param) + _STARS, param))
            elif kind == "domain":
                columns.append((index, _DOMAIN, b"", 0))
            else:
                native = False  # the C core leaves HMAC to Python
        if not walk:
            # Nothing masked: rows pass whole.
            walk.append("            s0 = p = stop\n")
        body = {"walk": "".join(walk).rstrip("\n"), "pieces": "".join(pieces)}
        # Generated so that the loop is unrolled for this plan's masked positions
        # and methods; a loop over a list of columns costs about half as much
        # again per row.  Only the fixed templates above go into it.  The
        # one-row form is what the C core hands the rows it does not take.
        source = _ROW_TEMPLATE.format(name="rewrite_rows", loop="while", after="", **body)
        if native and _rowmask is not None:
            source += _ROW_TEMPLATE.format(
                name="rewrite_row", loop="if", after="\n        return pos", **body
            )
        exec(compile(source, "<row masker>", "exec"), names)  # noqa: S102
        try:
            if native and _rowmask is not None:
                core = _rowmask.Masker(self.count, columns, names["rewrite_row"])
                self.native = True
                rewrite: Callable[[bytes, int, list[bytes]], int] = core.rewrite
                return rewrite
            return names["rewrite_rows"]  # type: ignore[return-value]
        except KeyError:  # pragma: no cover - the template always defines them
            raise AssertionError("row masker template defines no function") from None

    def _slow_row(self, buf: bytes, pos: int, stop: int, out: list[bytes]) -> None:
        """A row the generated path does not take: decoded, masked value by value, encoded."""
        values = _row_values(buf, pos + 5, stop)
        plan = self.plan
        for index in plan.masked:
            rule = plan.fields[index].rule
            assert rule is not None
            values[index] = mask_bytes(
                rule,
                plan.key,
                values[index],
                fmt=self.formats[index],
                type_oid=plan.fields[index].type_oid,
            )
        out.append(_DataRowMessage(values).encode())

    def _bad_count(self, buf: bytes, pos: int) -> None:
        if int.from_bytes(buf[pos + 1 : pos + 5], "big") < 6:
            raise ProtocolViolation("malformed DataRow message: no column count")
        got = int.from_bytes(buf[pos + 5 : pos + 7], "big")
        raise ProtocolViolation(f"DataRow has {got} columns, its RowDescription {self.count}")

    def rewrite_rows(self, buf: bytes, pos: int, out: list[bytes]) -> int:
        """Rewrite the run of DataRows in ``buf`` from ``pos``; returns where the run ends.

        The masked messages are appended to ``out`` (as pieces: join them once
        for the whole batch).  The run ends at the first message that is not a
        DataRow, or that is not complete in ``buf``.  Raises
        :class:`ProtocolViolation` for a malformed row.
        """
        try:
            return self._rewrite(buf, pos, out)
        except struct.error:
            raise ProtocolViolation("malformed DataRow message: value runs past its end") from None

    def message(self, body: bytes) -> bytes:
        """The whole masked DataRow message (type, length, body) for one DataRow body."""
        wire = _HEADER.pack(_DATA_ROW, len(body) + 4) + body
        out: list[bytes] = []
        if self.rewrite_rows(wire, 0, out) != len(wire):
            raise ProtocolViolation("malformed DataRow message")
        return b"".join(out)

    def body(self, body: bytes) -> bytes:
        """The masked body of one DataRow body."""
        return self.message(body)[5:]


def _overrun() -> None:
    raise ProtocolViolation("malformed DataRow message: a value runs past the message")


def _row_values(buf: bytes, start: int, stop: int) -> list[bytes | None]:
    values: list[bytes | None] = []
    pos = start + 2
    for _ in range(int.from_bytes(buf[start : start + 2], "big")):
        (length,) = _INT32.unpack_from(buf, pos)
        pos += 4
        if length < 0:
            values.append(None)
            continue
        if pos + length > stop:
            _overrun()
        values.append(buf[pos : pos + length])
        pos += length
    if pos != stop:
        raise ProtocolViolation(f"malformed DataRow message: {stop - pos} bytes of trailing data")
    return values


def _short_row(buf: bytes, pos: int, end: int) -> None:
    length = int.from_bytes(buf[pos + 1 : pos + 5], "big")
    if pos + 1 + length <= end:
        raise ProtocolViolation("malformed DataRow message: no column count")
