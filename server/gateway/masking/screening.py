"""What the content detectors and the text redaction let leave, beyond masked columns.

**Content detectors** — :func:`screen_row` runs the target's detectors over a
DataRow (a few literal searches over the body when nothing is there; columns
already masked and columns of ``plans.CLOSED_TYPES`` are not looked at): a
finding becomes ``***`` inside a value of a column announced as text, NULL in
any other, and a kind whose action is ``block`` refuses the row.
:func:`screen_report` masks findings in error and notice texts,
:func:`screen_notification` and :func:`screen_parameter` decide what a
notification payload and a parameter value leave as.

**Texts that echo data** — :func:`redact_text` / :func:`redact_report` for error
and notice texts that echo values (``Key (email)=(x@y.z) already exists``,
``Failing row contains (...)``, ``invalid input syntax ...: "..."``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from server.gateway.detectors import DetectorSet, Finding, mask_spans_bytes
from server.gateway.masking.rows import _row_values
from server.gateway.masking.rules import REDACTED
from server.gateway.pgwire import DataRow as _DataRowMessage

_KEY_DETAIL = re.compile(r"Key \((?P<cols>[^)]*)\)=\((?P<vals>.*)\)(?P<rest>[^)]*)$", re.DOTALL)
_FAILING_ROW = re.compile(r"(?P<head>Failing row contains \().*(?P<tail>\)\.?)$", re.DOTALL)
_QUOTED = re.compile(r'(?P<head>: )"(?:[^"]|"")*"')
# Report fields that may echo data: message, detail, hint, context, internal query.
REPORT_TEXT_FIELDS: Final = frozenset("MDHWq")


def redact_text(
    text: str,
    masked_values: Iterable[str] = (),
    *,
    masked_columns: Collection[str] = (),
    touches_masked: bool = False,
) -> str:
    """``text`` with masked data taken out.

    * every occurrence of a value in ``masked_values`` (longest first) becomes ``***``;
    * ``Key (cols)=(values)`` keeps the columns and loses the values when one of
      the columns is in ``masked_columns`` (lower-case names), or always when
      ``touches_masked``;
    * with ``touches_masked`` also ``Failing row contains (...)`` and quoted
      values after a colon (``invalid input syntax for type integer: "..."``),
      which is how a cast or a check echoes a value the statement read.
    """
    for value in sorted({v for v in masked_values if v}, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    match = _KEY_DETAIL.search(text)
    if match:
        columns = {c.strip().strip('"').lower() for c in match["cols"].split(",")}
        if touches_masked or not columns.isdisjoint(c.lower() for c in masked_columns):
            text = text[: match.start("vals")] + REDACTED + text[match.end("vals") :]
    if touches_masked:
        text = _FAILING_ROW.sub(lambda m: m["head"] + REDACTED + m["tail"], text)
        text = _QUOTED.sub(lambda m: m["head"] + '"' + REDACTED + '"', text)
    return text


def redact_report(
    fields: Mapping[str, str],
    masked_values: Iterable[str] = (),
    *,
    masked_columns: Collection[str] = (),
    touches_masked: bool = False,
) -> dict[str, str]:
    """An ErrorResponse/NoticeResponse field map with :func:`redact_text` applied to its texts."""
    values = tuple(masked_values)
    return {
        code: redact_text(
            value, values, masked_columns=masked_columns, touches_masked=touches_masked
        )
        if code in REPORT_TEXT_FIELDS
        else value
        for code, value in fields.items()
    }


@dataclass(frozen=True, slots=True)
class Screened:
    """A DataRow after the content detectors.

    ``body`` is the body to send instead (None: the row leaves as it came);
    ``blocked`` says which column and detector, without the value, when a
    finding's kind blocks: the whole result must then be refused.
    """

    body: bytes | None = None
    blocked: str | None = None


UNCHANGED: Final = Screened()


def screen_row(
    detectors: DetectorSet,
    body: bytes,
    names: Sequence[str] = (),
    *,
    in_place: Sequence[bool] | None = None,
    scanned: Sequence[bool] | None = None,
) -> Screened:
    """What the detectors leave of one DataRow body.

    Nothing found — the common case, one search over the whole body — gives
    :data:`UNCHANGED`.  A finding whose kind blocks refuses the row.  Otherwise
    each finding in a column with ``in_place[i]`` becomes ``***`` inside its
    value (the column is announced as text, whose bytes are the same in both
    formats, so the value stays valid); in any other column the whole value
    becomes NULL, since ``***`` inside an integer, a date or a binary value is no
    value of its type and a driver would misread it.  ``in_place`` None: no
    column is known to be text.  ``scanned[i]`` False skips column i.
    """
    scan = detectors.scan_row(body, scanned)
    if not scan.findings:
        return UNCHANGED
    if scan.blocked is not None:
        column = next(c for c, f in scan.findings if f is scan.blocked)
        name = names[column] if column < len(names) else f"#{column + 1}"
        return Screened(
            blocked=f"result column {name!r} holds what the {scan.blocked.kind} detector "
            f"({scan.blocked.name}) recognises"
        )
    by_column: dict[int, list[Finding]] = {}
    for column, finding in scan.findings:
        by_column.setdefault(column, []).append(finding)
    values = _row_values(body, 0, len(body))
    for column, findings in by_column.items():
        value = values[column]
        text = in_place is not None and column < len(in_place) and in_place[column]
        if text and value is not None:
            values[column] = mask_spans_bytes(value, findings)
        else:
            values[column] = None
    return Screened(body=_DataRowMessage(values).encode()[5:])


def screen_report(fields: Mapping[str, str], detectors: DetectorSet) -> dict[str, str]:
    """An ErrorResponse/NoticeResponse field map with what the detectors find in its texts
    replaced by ``***``, whatever the action: a report is not refused, only emptied."""
    return {
        code: detectors.mask(value) if code in REPORT_TEXT_FIELDS else value
        for code, value in fields.items()
    }


def screen_notification(payload: str, *, masked: bool, detectors: DetectorSet) -> str:
    """The payload a NotificationResponse leaves with.

    With masking rules in force a non-empty payload becomes ``***``: it is free
    text with no column origin to decide by, and it may come from a trigger
    or another session (``pg_notify(channel, NEW.ssn)``), so whether it holds
    masked data cannot be told; detectors would only catch what has a known
    shape.  The notification itself still arrives (its channel is one the
    client chose to LISTEN to, its sender pid is no data), so code that waits
    for it keeps working.  Without rules (detectors only), what the detectors
    find becomes ``***``.
    """
    if not payload:
        return payload
    if masked:
        return REDACTED
    return detectors.mask(payload)


# Reported parameters whose values the server checks against a vocabulary of
# its own (encodings, styles, on/off, numbers, time zones) or sets itself;
# drivers read some of them to decode values (client_encoding, DateStyle,
# IntervalStyle, TimeZone, integer_datetimes, standard_conforming_strings), so
# they must arrive as they are.
VOCABULARY_PARAMETERS: Final = frozenset(
    {
        "server_version",
        "server_encoding",
        "client_encoding",
        "datestyle",
        "intervalstyle",
        "timezone",
        "integer_datetimes",
        "standard_conforming_strings",
        "is_superuser",
        "in_hot_standby",
        "default_transaction_read_only",
        "scram_iterations",
    }
)


def screen_parameter(
    name: str,
    value: str,
    *,
    masked: bool,
    detectors: DetectorSet,
    written: Callable[[str], bool],
) -> str:
    """The value a ParameterStatus leaves with.

    What the detectors find becomes ``***``.  With masking rules in force, a
    free-text parameter (``application_name``, ``session_authorization``, any
    not in :data:`VOCABULARY_PARAMETERS`) keeps its value only when
    ``written(value)``, i.e. the client's own SQL holds it (``SET
    application_name = 'x'``); otherwise something else set it — a function
    calling ``set_config(..., email, ...)`` — and it becomes ``***``.
    """
    out = detectors.mask(value)
    if masked and out and name.lower() not in VOCABULARY_PARAMETERS and not written(out):
        return REDACTED
    return out
