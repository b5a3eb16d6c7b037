"""Durations: the forms accepted, the messages for the forms refused, and the round trip."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from common.durations import format_duration, parse_duration, parse_time


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("8h", timedelta(hours=8)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("2h0m5s", timedelta(hours=2, seconds=5)),
        ("1d1h1m1s", timedelta(days=1, hours=1, minutes=1, seconds=1)),
        ("0s", timedelta(0)),
        (" 15m ", timedelta(minutes=15)),
        ("007m", timedelta(minutes=7)),
    ],
)
def test_parse_accepts(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("8 hours", "'8 hours' is not a duration (use e.g. 30m, 8h, 1d)"),
        ("30", "'30' is not a duration: add a unit, e.g. 30m or 30s"),
        ("-5m", "'-5m' is not a duration: durations cannot be negative"),
        ("30m1h", "give each unit once, largest first, e.g. 1h30m"),
        ("1h1h", "give each unit once, largest first"),
        ("1.5h", "use whole numbers, e.g. 1h30m instead of 1.5h"),
        ("", "an empty value is not a duration"),
        ("   ", "an empty value is not a duration"),
        ("8H", "'8H' is not a duration"),
        ("1w", "'1w' is not a duration"),
        ("h", "'h' is not a duration"),
        ("PT8H", "'PT8H' is not a duration"),
        ("99999999999999999d", "too long a duration"),
    ],
)
def test_parse_refuses_with_a_helpful_message(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(text)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(minutes=30), "30m"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(hours=25), "1d1h"),
        (timedelta(days=3), "3d"),
        (timedelta(days=1, seconds=1), "1d1s"),
        (timedelta(minutes=29, seconds=59, microseconds=600_000), "29m59s"),
    ],
)
def test_format(value: timedelta, expected: str) -> None:
    assert format_duration(value) == expected


def test_format_refuses_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        format_duration(timedelta(seconds=-1))


@pytest.mark.parametrize("seconds", [0, 1, 59, 60, 61, 3599, 3600, 86399, 86400, 90061, 10**7])
def test_round_trip(seconds: int) -> None:
    value = timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value


NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PLUS_ONE = timezone(timedelta(hours=1))


@pytest.mark.parametrize(
    ("text", "direction", "expected"),
    [
        ("1h", "ago", NOW - timedelta(hours=1)),
        ("7d", "ago", NOW - timedelta(days=7)),
        (" 30m ", "ago", NOW - timedelta(minutes=30)),
        ("2h", "ahead", NOW + timedelta(hours=2)),
        ("2026-02-01T09:00", "ago", datetime(2026, 2, 1, 9, 0, tzinfo=UTC)),
        ("2026-02-01T09:00Z", "ahead", datetime(2026, 2, 1, 9, 0, tzinfo=UTC)),
        ("2026-02-01T09:00+01:00", "ago", datetime(2026, 2, 1, 9, 0, tzinfo=PLUS_ONE)),
        ("2026-02-01", "ago", datetime(2026, 2, 1, tzinfo=UTC)),
        # NOW is a Sunday; a named day is its midnight, a weekday the last one before today.
        ("today", "ago", datetime(2026, 3, 1, tzinfo=UTC)),
        ("yesterday", "ago", datetime(2026, 2, 28, tzinfo=UTC)),
        ("last Tuesday", "ago", datetime(2026, 2, 24, tzinfo=UTC)),
        ("last sunday", "ago", datetime(2026, 2, 22, tzinfo=UTC)),
    ],
)
def test_parse_time_accepts(text: str, direction: str, expected: datetime) -> None:
    assert parse_time(text, NOW, direction=direction, naive=UTC) == expected  # type: ignore[arg-type]


def test_parse_time_reads_a_naive_time_as_local_by_default() -> None:
    when = parse_time("2026-02-01T09:00", NOW, direction="ago")
    assert when.tzinfo is not None
    assert when == datetime(2026, 2, 1, 9, 0).astimezone()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("last week", "'last week' is not a time: give a duration (1h, 7d) or an ISO 8601 time"),
        ("", "is not a time"),
        ("1.5h", "use whole numbers"),
        ("-1h", "durations cannot be negative"),
        ("2026-13-01", "is not a time"),
    ],
)
def test_parse_time_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_time(text, NOW, direction="ago")
