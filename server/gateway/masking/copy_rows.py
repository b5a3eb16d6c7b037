"""COPY TO STDOUT rows in text and CSV format, masked: :class:`CopyMasker`.

A COPY's rows are not DataRows but lines in the format its options give
(:class:`CopyFormat`).  :class:`CopyMasker` takes one CopyData payload (one row)
at a time: splits it into fields by the format's rules (delimiter, NULL string,
backslash escapes for text; quotes and ESCAPE for CSV), masks the values of the
plan's masked columns (``rules.mask_value``) and writes the row back in the same
format.  A binary COPY of masked columns cannot be masked and is refused
(``CopyMasker.blocked``), as is a COPY whose plan blocks a column.  The relay
does not use it: it refuses COPY out of a table with masked columns
(``masking_relay``), since a COPY's rows carry no column origins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from server.gateway.masking.plans import MaskPlan
from server.gateway.masking.rules import mask_value
from server.gateway.pgwire import BINARY, ProtocolViolation


@dataclass(frozen=True)
class CopyFormat:
    """How a COPY's rows are written (from its options): text or CSV, and their characters."""

    csv: bool = False
    delimiter: str = ""
    null: str | None = None
    quote: str = '"'
    escape: str = ""
    header: bool = False

    @property
    def sep(self) -> str:
        return self.delimiter or ("," if self.csv else "\t")

    @property
    def null_text(self) -> str:
        if self.null is not None:
            return self.null
        return "" if self.csv else "\\N"

    @property
    def escape_char(self) -> str:
        return self.escape or self.quote


_TEXT_ESCAPES: Final = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_TEXT_UNESCAPES: Final = {v: k for k, v in _TEXT_ESCAPES.items()}


class CopyMasker:
    """Masks the rows of one COPY TO STDOUT, one CopyData payload (one row) at a time.

    Text format: fields split at unescaped delimiters, ``\\N`` (or the NULL
    string) is NULL, backslash escapes are undone before masking and redone
    after.  CSV: fields may be quoted (quotes doubled, or escaped with the
    ESCAPE character); an unquoted NULL string is NULL; masked values are
    always written quoted.  With HEADER the first row is the column names and
    passes as it is.  Binary COPY cannot be masked: ``blocked`` says so.
    """

    def __init__(self, plan: MaskPlan, overall_format: int, fmt: CopyFormat) -> None:
        self.plan = plan
        self.fmt = fmt
        self.masked = {i: plan.fields[i] for i in plan.masked}
        self.identity = not self.masked and plan.blocked is None
        self.blocked: str | None = plan.block_message()
        if self.blocked is None and overall_format == BINARY and self.masked:
            self.blocked = "a binary COPY of masked columns cannot be masked: use text or CSV"
        self._rows = 0

    def row(self, payload: bytes) -> bytes:
        """One CopyData payload, masked."""
        self._rows += 1
        if self.identity or (self.fmt.header and self._rows == 1):
            return payload
        if self.blocked is not None:
            raise ValueError(self.blocked)
        text = payload.decode("utf-8")
        ending = "\r\n" if text.endswith("\r\n") else "\n" if text.endswith("\n") else ""
        line = text[: len(text) - len(ending)]
        out = self._csv(line) if self.fmt.csv else self._text(line)
        return (out + ending).encode("utf-8")

    def _value(self, index: int, value: str | None) -> str | None:
        plan = self.masked.get(index)
        if plan is None or value is None:
            return value
        assert plan.rule is not None
        return mask_value(plan.rule, self.plan.key, value)

    def _text(self, line: str) -> str:
        sep = self.fmt.sep
        null = self.fmt.null_text
        raw = _split_text(line, sep)
        if len(raw) != len(self.plan.fields):
            raise ProtocolViolation(f"COPY row has {len(raw)} fields, not {len(self.plan.fields)}")
        out: list[str] = []
        for index, field_text in enumerate(raw):
            if index not in self.masked:
                out.append(field_text)
                continue
            value = None if field_text == null else _unescape_text(field_text)
            masked = self._value(index, value)
            out.append(null if masked is None else _escape_text(masked, sep))
        return sep.join(out)

    def _csv(self, line: str) -> str:
        fmt = self.fmt
        sep, quote, escape = fmt.sep, fmt.quote, fmt.escape_char
        fields = _split_csv(line, sep, quote, escape)
        if len(fields) != len(self.plan.fields):
            raise ProtocolViolation(
                f"COPY row has {len(fields)} fields, not {len(self.plan.fields)}"
            )
        out: list[str] = []
        for index, (field_text, quoted) in enumerate(fields):
            if index not in self.masked:
                out.append(field_text)
                continue
            if not quoted and field_text == fmt.null_text:
                value: str | None = None
            else:
                value = _unquote_csv(field_text, quote, escape) if quoted else field_text
            masked = self._value(index, value)
            if masked is None:
                out.append(fmt.null_text)
            else:
                if escape == quote:
                    inner = masked.replace(quote, quote + quote)
                else:
                    inner = masked.replace(escape, escape + escape).replace(quote, escape + quote)
                out.append(quote + inner + quote)
        return sep.join(out)


def _split_text(line: str, sep: str) -> list[str]:
    if "\\" not in line:
        return line.split(sep)
    fields: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and i + 1 < len(line):
            current.append(line[i : i + 2])
            i += 2
            continue
        if ch == sep:
            fields.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    fields.append("".join(current))
    return fields


def _unescape_text(text: str) -> str:
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append(_TEXT_ESCAPES.get(nxt, nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _escape_text(text: str, sep: str) -> str:
    out: list[str] = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch in _TEXT_UNESCAPES:
            out.append("\\" + _TEXT_UNESCAPES[ch])
        elif ch == sep:
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def _split_csv(line: str, sep: str, quote: str, escape: str) -> list[tuple[str, bool]]:
    """Fields as written (quotes kept for quoted ones), and whether each was quoted."""
    fields: list[tuple[str, bool]] = []
    i, size = 0, len(line)
    while True:
        if i < size and line[i] == quote:
            j = i + 1
            while j < size:
                ch = line[j]
                if ch == escape and escape != quote and j + 1 < size:
                    j += 2
                    continue
                if ch == quote:
                    if escape == quote and j + 1 < size and line[j + 1] == quote:
                        j += 2
                        continue
                    break
                j += 1
            if j >= size:
                raise ProtocolViolation("COPY CSV row has an unterminated quoted field")
            fields.append((line[i : j + 1], True))
            i = j + 1
        else:
            j = line.find(sep, i)
            j = size if j < 0 else j
            fields.append((line[i:j], False))
            i = j
        if i >= size:
            return fields
        if line[i] != sep:
            raise ProtocolViolation("COPY CSV row has text after a quoted field")
        i += 1
        if i == size:
            fields.append(("", False))
            return fields


def _unquote_csv(text: str, quote: str, escape: str) -> str:
    inner = text[1:-1]
    if escape == quote:
        return inner.replace(quote + quote, quote)
    out: list[str] = []
    i = 0
    while i < len(inner):
        if inner[i] == escape and i + 1 < len(inner):
            out.append(inner[i + 1])
            i += 2
        else:
            out.append(inner[i])
            i += 1
    return "".join(out)
