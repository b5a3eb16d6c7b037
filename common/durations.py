"""Durations as people write them in policy and config files: ``90s``, ``30m``, ``8h``, ``1h30m``.

A duration is one or more ``<whole number><unit>`` parts, units ``d``, ``h``, ``m``,
``s``, each at most once and largest first.  Bare numbers are refused on purpose:
``ttl: 30`` is ambiguous (seconds? minutes?) and a wrong guess on a credential's
lifetime is a security problem, not a cosmetic one.  Negative and fractional
values are refused too; ``1h30m`` says what ``1.5h`` means without rounding.

``format_duration`` is the inverse for whole seconds (``parse_duration(format_duration(d)) == d``),
so a value read from a file can be shown back to the person in the form they wrote.

``parse_time`` reads a point in time wherever one is taken (``audit --since``,
``request --start-at``, their API parameters): an ISO 8601 time (a date alone is
its midnight), a duration counted back from now (``since 1h``) or ahead of it
(``start in 2h``), or a day by name: ``today``, ``yesterday``, ``last tuesday``
(the most recent Tuesday before today), each its midnight.
"""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta, tzinfo
from typing import Literal

_EXAMPLES = "use e.g. 30m, 8h, 1d"
_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_PARTS = re.compile(r"(?:\d+[dhms])+")


def parse_duration(text: str) -> timedelta:
    """Parse ``1d``, ``8h``, ``30m``, ``90s`` or a combination such as ``1h30m``.

    Raises ValueError with a message that quotes the input and says how to fix it.
    """
    stripped = text.strip()
    match = _DURATION.fullmatch(stripped)
    if stripped and match is not None:
        seconds = sum(
            int(number) * factor
            for number, (_, factor) in zip(match.groups(), _UNITS, strict=True)
            if number is not None
        )
        try:
            return timedelta(seconds=seconds)
        except OverflowError:
            raise ValueError(f"{text!r} is too long a duration") from None
    raise ValueError(_explain(text, stripped))


def parse_positive_duration(text: str, what: str = "it") -> timedelta:
    """``parse_duration`` for a lifetime or interval, which must be longer than zero.

    ``what`` names the value in the message: ``'0s' is too short: <what> must be ...``.
    """
    value = parse_duration(text)
    if value <= timedelta(0):
        raise ValueError(f"{text!r} is too short: {what} must be longer than zero")
    return value


def _explain(text: str, stripped: str) -> str:
    if not stripped:
        return f"an empty value is not a duration ({_EXAMPLES})"
    if stripped.startswith("-"):
        return f"{text!r} is not a duration: durations cannot be negative"
    if stripped.isdigit():
        return f"{text!r} is not a duration: add a unit, e.g. {stripped}m or {stripped}s"
    if _PARTS.fullmatch(stripped):
        return f"{text!r} is not a duration: give each unit once, largest first, e.g. 1h30m"
    if re.fullmatch(r"[\d.]+[dhms]", stripped):
        return f"{text!r} is not a duration: use whole numbers, e.g. 1h30m instead of 1.5h"
    return f"{text!r} is not a duration ({_EXAMPLES})"


def format_duration(value: timedelta) -> str:
    """Write a duration the way ``parse_duration`` reads it: ``1h30m``, ``1d``, ``0s``.

    Fractions of a second are dropped (a remaining lifetime of 29m59.6s shows as
    ``29m59s``); negative durations raise ValueError.
    """
    if value < timedelta(0):
        raise ValueError(f"cannot format a negative duration ({value})")
    remaining = value.days * 86400 + value.seconds
    parts = []
    for unit, factor in _UNITS:
        count, remaining = divmod(remaining, factor)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


_TIME_EXAMPLES = (
    "an ISO 8601 time such as 2026-03-01T09:00 or 2026-03-01T09:00+01:00, "
    "or a day: today, yesterday, last monday"
)
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _named_day(text: str, now: datetime, zone: tzinfo | None) -> datetime | None:
    """The midnight of ``today``, ``yesterday`` or ``last <weekday>`` in ``zone``
    (None: this machine's), or None for any other text."""
    words = text.lower().split()
    local = now.astimezone(zone) if zone is not None else now.astimezone()
    if words == ["today"]:
        back = 0
    elif words == ["yesterday"]:
        back = 1
    elif len(words) == 2 and words[0] == "last" and words[1] in _WEEKDAYS:
        back = (local.weekday() - _WEEKDAYS.index(words[1])) % 7 or 7
    else:
        return None
    day = local.date() - timedelta(days=back)
    return datetime.combine(day, time(), local.tzinfo)


def parse_time(
    text: str,
    now: datetime,
    *,
    direction: Literal["ago", "ahead"],
    naive: tzinfo | None = None,
) -> datetime:
    """A point in time: ISO 8601, or a duration counted from ``now`` (which is aware).

    ``direction`` says which way a duration counts: ``ago`` for ``--since 1h``,
    ``ahead`` for ``--start-at 2h``.  An ISO time without an offset is in
    ``naive`` (None: this machine's local time zone), and so are the days named
    ``today``, ``yesterday`` and ``last <weekday>``.  The result is aware.
    Raises ValueError with a message that quotes the input and shows both forms.
    """
    stripped = text.strip()
    if stripped[:1] in ("-", *"0123456789") and stripped[-1:] in ("d", "h", "m", "s"):
        span = parse_duration(stripped)  # a duration, or its own message why not
        return now - span if direction == "ago" else now + span
    named = _named_day(stripped, now, naive)
    if named is not None:
        return named
    try:
        when = datetime.fromisoformat(stripped)
    except ValueError:
        example = "1h, 7d" if direction == "ago" else "30m, 2h"
        raise ValueError(
            f"{text!r} is not a time: give a duration ({example}) or {_TIME_EXAMPLES}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=naive) if naive is not None else when.astimezone()
    return when
