"""Durations: the forms accepted, the messages for the forms refused, and the round trip."""

from __future__ import annotations

from datetime import timedelta

import pytest

from server.durations import format_duration, parse_duration


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
