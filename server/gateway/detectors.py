"""Content detectors: a second net that recognises sensitive values whatever column they are in.

Masking rules follow column origins; these follow content, so they also catch
a card number in a ``notes`` column, a token in a log table, an e-mail address in
a notification payload.  Each detector is a compiled regular expression for
the shape, and where one exists a check that the shape alone cannot make:

=============  ======================================================================
kind           what is recognised
=============  ======================================================================
email          ``local@domain.tld``
phone          E.164 (``+`` and 8 to 15 digits, separators allowed); North American
               ``(415) 555-2671`` / ``415-555-2671`` / ``415.555.2671``; French
               ``06 12 34 56 78``; UK ``020 7946 0958`` / ``07700 900123``
card           13 to 19 digits, in groups separated by spaces or dashes or not at all,
               starting like a card network's number (2221-2720, 3, 4, 5, 6),
               not all one digit, and passing the Luhn check (tried on whole-group
               prefixes too, so ``4111 1111 1111 1111 123`` is found)
national_id    US SSN ``123-45-6789`` (dashes required; area 000, 666 and 900-999,
               group 00 and serial 0000 are never issued); UK National Insurance
               number ``AB 12 34 56 C`` (the letters HMRC allocates); Spanish DNI
               ``12345678Z`` (the letter checked: number mod 23)
secret         AWS access key ids (``AKIA``/``ASIA``/… and 16 base-32 characters);
               ``-----BEGIN … PRIVATE KEY-----`` blocks; JWTs (``eyJ…`` segments whose
               header decodes to JSON naming ``alg`` or ``typ``); provider API keys
               (``sk_live_``/``sk_test_``/``rk_…``, ``ghp_``… GitHub, ``xox?-`` Slack,
               ``glpat-`` GitLab) whose random part is not a placeholder
               (at least 3 bits of entropy per character)
=============  ======================================================================

A :class:`DetectorSet` holds the detectors a target enables and what each
does (``mask``: the found text becomes ``***``; ``block``: the value must not
leave, the gateway refuses the result).  Scanning a text (an error message, a
payload) starts with one pass of a single combined expression of every enabled
shape; only when that finds something do the per-detector expressions and
checks run.

Values (bytes) are many, and Python's ``re`` tries every alternative at every
position, so a search with the shapes costs tens of microseconds per row.  So
each shape also says what any match of it needs, as literals: in the value
with every ASCII digit written ``0`` (``000-00-0000`` for an SSN, the 8 digits
and letter of a DNI, ``eyJ`` for a JWT, ``AKIA`` and its kin), or a run of
digits once the separators `` .()-`` are left out (13 for a card).  A value
passes these gates with one ``translate``, a ``find`` and one search of the
literals written as a trie; only then do the shapes run.  An e-mail address is
gated by counting: an ``@`` that only follows ``*`` (what ``partial`` with
``keep: domain`` leaves in every row) ends no address.
:meth:`DetectorSet.scan_row` puts the gates on a whole DataRow first (they are
literals, and a value's bytes are a stretch of the row's, so a row they find
nothing in holds nothing), then scans the values one by one, never across a
length word, skipping the columns it is told to.

What this cannot know: a number that happens to pass Luhn (one in ten random
16-digit numbers does) is taken for a card; a card written without a network's
prefix, or inside a longer run of digits, is not found.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from server.gateway.pgwire import ProtocolViolation
from server.policy.model import DetectorAction, DetectorKind

REDACTED: Final = "***"


@dataclass(frozen=True, slots=True)
class Finding:
    """One recognised value: which detector, and where (character or byte offsets)."""

    kind: DetectorKind
    name: str
    start: int
    end: int


# --------------------------------------------------------------------------
# Checks the shapes cannot make


def luhn_ok(digits: str) -> bool:
    total = 0
    for position, ch in enumerate(reversed(digits)):
        value = ord(ch) - 48
        if position % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _card_prefix_ok(digits: str) -> bool:
    first = digits[0]
    if first in "3456":
        return True
    return first == "2" and 2221 <= int(digits[:4]) <= 2720


def _card_number_ok(digits: str) -> bool:
    return (
        13 <= len(digits) <= 19
        and _card_prefix_ok(digits)
        and digits.count(digits[0]) != len(digits)
        and luhn_ok(digits)
    )


def _card_end(text: str) -> int | None:
    """Where a card number in ``text`` (a candidate match) ends, or None if it holds none."""
    digits = "".join(ch for ch in text if ch.isdigit())
    if _card_number_ok(digits):
        return len(text)
    # "4111 1111 1111 1111 123": the whole run fails, a prefix of whole groups may not.
    for match in reversed(list(_GROUP_END.finditer(text))):
        prefix = text[: match.start()]
        if _card_number_ok("".join(ch for ch in prefix if ch.isdigit())):
            return match.start()
    return None


_GROUP_END = re.compile(r"[ -]")


def _phone_ok(text: str) -> bool:
    digits = sum(ch.isdigit() for ch in text)
    return 8 <= digits <= 15


_DNI_LETTERS: Final = "TRWAGMYFPDXBNJZSQVHLCKE"


def _dni_ok(text: str) -> bool:
    number = int(text[:8])
    return _DNI_LETTERS[number % 23] == text[-1].upper()


def _jwt_ok(text: str) -> bool:
    head = text.split(".", 1)[0]
    try:
        decoded = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))
        parsed = json.loads(decoded)
    except (binascii.Error, ValueError):
        return False
    return isinstance(parsed, dict) and ("alg" in parsed or "typ" in parsed)


def entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    if not text:
        return 0.0
    size = len(text)
    return -sum(n / size * math.log2(n / size) for n in Counter(text).values())


def _api_key_ok(text: str) -> bool:
    random_part = re.split(r"[_-]", text)[-1] if "_" in text or "-" in text else text
    return entropy(random_part) >= 3.0


# --------------------------------------------------------------------------
# Shapes


@dataclass(frozen=True)
class _Detector:
    """One shape, and what any match of ``pattern`` needs, so that ``pattern`` only
    runs on values that could hold a match: one of ``literals`` in the value with
    every ASCII digit written ``0`` (``000-00-0000`` for an SSN, ``@``), and, for
    shapes whose digits may be split by separators (cards, some phones), ``run``
    digits in a row once the separators `` .()-`` are left out.  Both are looked
    for as literals, which ``re`` finds far faster than a shape."""

    kind: DetectorKind
    name: str
    pattern: str
    run: int = 0
    literals: tuple[bytes, ...] = ()
    check: Callable[[str], bool] | None = None
    flags: int = 0


_AWS_PREFIXES: Final = (
    b"AKIA",
    b"ASIA",
    b"ABIA",
    b"ACCA",
    b"AGPA",
    b"AIDA",
    b"AIPA",
    b"ANPA",
    b"ANVA",
    b"APKA",
    b"AROA",
)
# The digits of a UK NI number (spaced in pairs or not) and its letter A-D; the
# eight digits of a Spanish DNI and its letter.  With the letter, a run of six
# or eight digits (microseconds, an order number) is not taken for one.
_NINO_LITERALS: Final = tuple(
    f"{digits}{space}{letter}".encode()
    for digits in ("000000", "00 0000", "0000 00", "00 00 00")
    for space in ("", " ")
    for letter in "ABCD"
)
_DNI_LITERALS: Final = tuple(
    f"00000000{dash}{letter}".encode() for dash in ("", "-") for letter in "ABCDEFGHJKLMNPQRSTVWXYZ"
)
_DETECTORS: Final = (
    _Detector(
        DetectorKind.EMAIL,
        "email",
        r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
        r"(?![A-Za-z0-9-])",
        literals=(b"@",),
    ),
    _Detector(
        DetectorKind.PHONE,
        "e164",
        r"(?<![A-Za-z0-9+])\+[1-9](?:[ .()-]{0,2}[0-9]){6,14}(?![0-9])",
        run=7,
        literals=(b"+",),
        check=_phone_ok,
    ),
    _Detector(
        DetectorKind.PHONE,
        "nanp",
        r"(?<![0-9])(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[-. ])[2-9][0-9]{2}[-. ][0-9]{4}"
        r"(?![0-9])",
        literals=(b"000-0000", b"000.0000", b"000 0000"),
    ),
    _Detector(
        DetectorKind.PHONE,
        "fr",
        r"(?<![0-9])0[1-9](?:[ .][0-9]{2}){4}(?![0-9])",
        run=10,
    ),
    _Detector(
        DetectorKind.PHONE,
        "uk",
        r"(?<![0-9])0[1-9][0-9]{1,3} [0-9]{3,4} ?[0-9]{3,4}(?![0-9])",
        literals=(b"000 000",),
    ),
    _Detector(
        DetectorKind.CARD,
        "card",
        r"(?<![0-9])[2-6](?:[ -]?[0-9]){12,18}(?![0-9])",
        run=13,
    ),
    _Detector(
        DetectorKind.NATIONAL_ID,
        "us_ssn",
        r"(?<![0-9-])(?!000|666|9[0-9]{2})[0-9]{3}-(?!00)[0-9]{2}-(?!0000)[0-9]{4}(?![0-9-])",
        literals=(b"000-00-0000",),
    ),
    _Detector(
        DetectorKind.NATIONAL_ID,
        "uk_nino",
        r"(?<![A-Za-z0-9])(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
        r" ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D](?![A-Za-z0-9])",
        literals=_NINO_LITERALS,
    ),
    _Detector(
        DetectorKind.NATIONAL_ID,
        "es_dni",
        r"(?<![A-Za-z0-9])[0-9]{8}-?[A-HJ-NP-TV-Z](?![A-Za-z0-9])",
        literals=_DNI_LITERALS,
        check=_dni_ok,
    ),
    _Detector(
        DetectorKind.SECRET,
        "aws_access_key",
        r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA)[A-Z2-7]{16}"
        r"(?![A-Z0-9])",
        literals=_AWS_PREFIXES,
    ),
    _Detector(
        DetectorKind.SECRET,
        "private_key",
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"
        r"(?:.*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----)?",
        literals=(b"-----BEGIN ",),
        flags=re.DOTALL,
    ),
    _Detector(
        DetectorKind.SECRET,
        "jwt",
        r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",
        literals=(b"eyJ",),
        check=_jwt_ok,
    ),
    _Detector(
        DetectorKind.SECRET,
        "api_key",
        r"(?<![A-Za-z0-9])(?:(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"
        r"|gh[pousr]_[A-Za-z0-9]{36,}|xox[abprs]-[A-Za-z0-9-]{10,}|glpat-[A-Za-z0-9_-]{20,})",
        literals=(
            b"k_live_",
            b"k_test_",
            b"ghp_",
            b"gho_",
            b"ghu_",
            b"ghs_",
            b"ghr_",
            b"xox",
            b"glpat-",
        ),
        check=_api_key_ok,
    ),
)

DETECTOR_NAMES: Final = tuple(d.name for d in _DETECTORS)


@dataclass(frozen=True)
class _Compiled:
    detector: _Detector
    text: re.Pattern[str]
    data: re.Pattern[bytes]
    run: bytes  # b"0" * detector.run
    literals: re.Pattern[bytes] | None  # any of the literals, in the digits-as-zero value


def _literals(literals: Iterable[bytes]) -> re.Pattern[bytes]:
    """An expression that finds any of ``literals``, written as a trie.

    ``re`` tries the branches of an alternation one after the other at every
    position, so ``000000|00000000|000-00-0000`` costs three attempts at each
    digit; as a trie the common prefix is read once.  Only whether some literal
    occurs matters, so a literal that another one starts with is left out.
    """
    trie: dict[int, Any] = {}
    for literal in literals:
        node = trie
        for byte in literal:
            node = node.setdefault(byte, {})
        node[-1] = {}

    def emit(node: dict[int, Any]) -> bytes:
        if -1 in node:  # a literal ends here: any longer one holds it
            return b""
        branches = [re.escape(bytes((byte,))) + emit(child) for byte, child in sorted(node.items())]
        return branches[0] if len(branches) == 1 else b"(?:" + b"|".join(branches) + b")"

    return re.compile(emit(trie))


def _compile(detector: _Detector) -> _Compiled:
    if not detector.run and not detector.literals:
        raise AssertionError(f"detector {detector.name} needs a run or literals")
    return _Compiled(
        detector,
        re.compile(detector.pattern, detector.flags),
        re.compile(detector.pattern.encode(), detector.flags),
        b"0" * detector.run,
        _literals(detector.literals) if detector.literals else None,
    )


_COMPILED: Final = {d.name: _compile(d) for d in _DETECTORS}


# --------------------------------------------------------------------------
# Sets of detectors


@dataclass(frozen=True)
class RowScan:
    """What a DataRow holds: findings per column, and the first one whose action is block."""

    findings: tuple[tuple[int, Finding], ...]
    blocked: Finding | None

    @property
    def columns(self) -> frozenset[int]:
        return frozenset(column for column, _ in self.findings)


NOTHING_FOUND: Final = RowScan((), None)
_INT32 = struct.Struct("!i")


@dataclass(frozen=True)
class DetectorSet:
    """The detectors one target enables, and the action of each kind."""

    actions: Mapping[DetectorKind, DetectorAction] = field(
        default_factory=lambda: MappingProxyType({})
    )
    _enabled: tuple[_Compiled, ...] = field(init=False, repr=False, compare=False)
    _any_text: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    # The shortest run of digits a detector with a run needs (in the compact
    # value: digits as "0", separators left out), and every literal of the others
    # (in the value with digits as "0").  A value with neither holds nothing.
    _least_run: bytes = field(init=False, repr=False, compare=False)
    _hints: re.Pattern[bytes] | None = field(init=False, repr=False, compare=False)
    # E-mail is looked for by counting: an "@" that only follows "*" (what
    # ``partial`` with ``keep: domain`` leaves, in every row) ends no address.
    _email: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        enabled = tuple(_COMPILED[d.name] for d in _DETECTORS if d.kind in self.actions)
        object.__setattr__(self, "_enabled", enabled)
        runs = [c.run for c in enabled if c.run]
        object.__setattr__(self, "_least_run", min(runs, key=len) if runs else b"")
        email = any(c.detector.kind is DetectorKind.EMAIL for c in enabled)
        object.__setattr__(self, "_email", email)
        hints = {
            h
            for c in enabled
            if not c.run and c.detector.kind is not DetectorKind.EMAIL
            for h in c.detector.literals
        }
        object.__setattr__(self, "_hints", _literals(sorted(hints)) if hints else None)
        if not enabled:
            object.__setattr__(self, "_any_text", None)
            return
        # The same shapes in one alternation: a text none of them matches costs one search.
        # DOTALL is scoped to the branch that needs it.
        branches = [
            f"(?s:{c.detector.pattern})" if c.detector.flags & re.DOTALL else c.detector.pattern
            for c in enabled
        ]
        combined = "|".join(f"(?:{b})" for b in branches)
        object.__setattr__(self, "_any_text", re.compile(combined))

    @classmethod
    def of(cls, actions: Mapping[DetectorKind, DetectorAction]) -> DetectorSet:
        return cls(MappingProxyType(dict(actions)))

    @property
    def enabled(self) -> bool:
        return bool(self._enabled)

    def scan(self, text: str) -> list[Finding]:
        """Everything the enabled detectors recognise in ``text``, in order of position."""
        if self._any_text is None or self._any_text.search(text) is None:
            return []
        found: list[Finding] = []
        for compiled in self._enabled:
            detector = compiled.detector
            for match in compiled.text.finditer(text):
                end = self._check(detector, match.group())
                if end is not None:
                    start = match.start()
                    found.append(Finding(detector.kind, detector.name, start, start + end))
        found.sort(key=lambda f: (f.start, -f.end))
        return found

    def scan_bytes(self, data: bytes) -> list[Finding]:
        """:meth:`scan` over UTF-8 bytes; offsets are byte offsets.

        Each shape's expression runs only when the value has what any match of
        it needs (a run of digits, a literal such as ``@``): one ``translate`` and a
        few substring tests for a value that holds nothing, where a search with
        the expressions would cost a hundred times more (``re`` tries each of them
        at every position).
        """
        if not self._enabled:
            return []
        gated = self._gated(data)
        if gated is None:
            return []
        digits, hints, shape, compact = gated
        found: list[Finding] = []
        for compiled in self._enabled:
            detector = compiled.detector
            if compiled.run:
                if not digits or compact.find(compiled.run) < 0:
                    continue
            elif not hints:
                continue
            if compiled.literals is not None and compiled.literals.search(shape) is None:
                continue
            for match in compiled.data.finditer(data):
                # Latin-1 maps each byte to one character, so offsets stay byte offsets.
                end = self._check(detector, match.group().decode("latin-1"))
                if end is not None:
                    start = match.start()
                    found.append(Finding(detector.kind, detector.name, start, start + end))
        found.sort(key=lambda f: (f.start, -f.end))
        return found

    def _gated(self, data: bytes) -> tuple[bool, bool, bytes, bytes] | None:
        """None when ``data`` cannot hold a match of any enabled shape (a few C calls);
        else whether the digit shapes and the literal shapes may match, and the
        digits-as-zero and compact forms of ``data``."""
        shape = data.translate(_DIGITS_AS_ZERO)
        hinted = self._hints
        hints = (self._email and shape.count(b"@") > shape.count(b"*@")) or (
            hinted is not None and hinted.search(shape) is not None
        )
        compact = b""
        digits = False
        least = self._least_run
        if least and shape.count(48) >= len(least):  # enough digits for a run at all
            compact = shape.translate(None, _SEPARATORS)
            digits = compact.find(least) >= 0
        if not digits and not hints:
            return None
        return digits, hints, shape, compact

    @staticmethod
    def _check(detector: _Detector, text: str) -> int | None:
        """How much of a shape's match the detector's check accepts (None: none of it)."""
        if detector.kind is DetectorKind.CARD:
            return _card_end(text)
        if detector.check is None or detector.check(text):
            return len(text)
        return None

    def action(self, findings: Iterable[Finding]) -> DetectorAction | None:
        """``block`` if any finding's kind blocks, ``mask`` if there are findings, else None."""
        result: DetectorAction | None = None
        for finding in findings:
            action = self.actions.get(finding.kind, DetectorAction.MASK)
            if action is DetectorAction.BLOCK:
                return action
            result = action
        return result

    def blocking(self, findings: Iterable[Finding]) -> Finding | None:
        return next((f for f in findings if self.actions.get(f.kind) is DetectorAction.BLOCK), None)

    def mask(self, text: str) -> str:
        """``text`` with every finding replaced by ``***`` (whatever the action)."""
        return mask_spans(text, self.scan(text))

    def scan_row(self, body: bytes, columns: Sequence[bool] | None = None) -> RowScan:
        """Findings in the values of one DataRow body; ``columns[i]`` False skips column i.

        Skip columns whose values are not text (binary format of a non-text
        type): their bytes are not characters, and a match in them means nothing.
        Each value is scanned on its own (:meth:`scan_bytes`), never the row as a
        whole: the length word before a value is no part of it.  (A column past
        the end of ``columns`` is scanned.)
        """
        if not self._enabled:
            return NOTHING_FOUND
        size = len(body)
        if size < 2:
            raise ProtocolViolation("malformed DataRow message: no column count")
        # The gates are literals (no look-arounds), and a value's bytes are a
        # stretch of the row's: a row the gates find nothing in holds nothing,
        # however its length words are laid out.
        if self._gated(body) is None:
            return NOTHING_FOUND
        known = len(columns) if columns is not None else 0
        unpack = _INT32.unpack_from
        scan = self.scan_bytes
        found: list[tuple[int, Finding]] | None = None
        pos = 2
        # Inline rather than _values(): this runs for every row of a result.
        for index in range(int.from_bytes(body[:2], "big")):
            if size - pos < 4:
                raise ProtocolViolation("malformed DataRow message: insufficient data")
            (length,) = unpack(body, pos)
            pos += 4
            if length < 0:
                continue
            end = pos + length
            if end > size:
                raise ProtocolViolation("malformed DataRow message: a value runs past the message")
            if columns is None or index >= known or columns[index]:
                hits = scan(body[pos:end])
                if hits:
                    found = found or []
                    found.extend((index, finding) for finding in hits)
            pos = end
        if found is None:
            return NOTHING_FOUND
        return RowScan(tuple(found), self.blocking(f for _, f in found))

    def mask_row(self, body: bytes, scan: RowScan) -> bytes:
        """A DataRow body with the findings of ``scan`` replaced by ``***`` in their values."""
        if not scan.findings:
            return body
        by_column: dict[int, list[Finding]] = {}
        for column, finding in scan.findings:
            by_column.setdefault(column, []).append(finding)
        parts = [body[:2]]
        for index, start, end in _values(body, with_nulls=True):
            if start < 0:
                parts.append(b"\xff\xff\xff\xff")
                continue
            value = body[start:end]
            hits = by_column.get(index)
            if hits:
                value = mask_spans_bytes(value, hits)
            parts.append(_INT32.pack(len(value)))
            parts.append(value)
        return b"".join(parts)


NO_DETECTORS: Final = DetectorSet()
# Every ASCII digit written "0", every other byte as it is (so a "0" is a digit).
_DIGITS_AS_ZERO: Final = bytes(0x30 if 0x30 <= b <= 0x39 else b for b in range(256))
# What separates the digits of a card or phone number; left out for ``run``.
_SEPARATORS: Final = b" .()-"


def _values(body: bytes, *, with_nulls: bool = False) -> Iterable[tuple[int, int, int]]:
    """(column, start, end) of each value of a DataRow body; NULLs as (-1, -1) if asked."""
    if len(body) < 2:
        raise ProtocolViolation("malformed DataRow message: no column count")
    count = int.from_bytes(body[:2], "big")
    pos = 2
    size = len(body)
    for index in range(count):
        if size - pos < 4:
            raise ProtocolViolation("malformed DataRow message: insufficient data")
        (length,) = _INT32.unpack_from(body, pos)
        pos += 4
        if length < 0:
            if with_nulls:
                yield index, -1, -1
            continue
        if length > size - pos:
            raise ProtocolViolation("malformed DataRow message: a value runs past the message")
        yield index, pos, pos + length
        pos += length


def _merged(findings: Iterable[Finding]) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for finding in sorted(findings, key=lambda f: f.start):
        if spans and finding.start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], finding.end))
        else:
            spans.append((finding.start, finding.end))
    return spans


def mask_spans(text: str, findings: Iterable[Finding]) -> str:
    out: list[str] = []
    pos = 0
    for start, end in _merged(findings):
        out.append(text[pos:start])
        out.append(REDACTED)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def mask_spans_bytes(data: bytes, findings: Iterable[Finding]) -> bytes:
    out: list[bytes] = []
    pos = 0
    for start, end in _merged(findings):
        out.append(data[pos:start])
        out.append(REDACTED.encode())
        pos = end
    out.append(data[pos:])
    return b"".join(out)
