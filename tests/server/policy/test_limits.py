"""Limit values between the policy's spelling, PostgreSQL's units and the shares ``auto`` means."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from server.policy.limits import (
    connection_shares,
    database_settings,
    parse_size,
    parse_temp_file_limit,
    parse_timeout,
    pg_duration,
    pg_size,
)
from server.policy.model import READ_LIMITS, WRITE_LIMITS


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("off", timedelta(0)),
        ("0", timedelta(0)),
        ("OFF", timedelta(0)),
        ("90s", timedelta(seconds=90)),
        ("1h30m", timedelta(minutes=90)),
    ],
)
def test_timeouts(text: str, value: timedelta) -> None:
    assert parse_timeout(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("512kB", 512 << 10),
        ("64MB", 64 << 20),
        ("1GB", 1 << 30),
        ("2TB", 2 << 40),
        ("10B", 10),
    ],
)
def test_sizes(text: str, value: int) -> None:
    assert parse_size(text) == value


def test_temp_file_limit_off_is_minus_one_as_in_postgresql() -> None:
    assert parse_temp_file_limit("off") == -1
    assert parse_temp_file_limit("0") == 0  # no temporary files at all


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(minutes=5), "5min"),
        (timedelta(seconds=90), "90s"),
        (timedelta(hours=1), "1h"),
        (timedelta(days=2), "2d"),
        (timedelta(milliseconds=1500), "1500ms"),
    ],
)
def test_postgresql_durations_are_exact(value: timedelta, text: str) -> None:
    assert pg_duration(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1 << 30, "1GB"),
        (4 << 30, "4GB"),
        (512 << 20, "512MB"),
        (1536 << 10, "1536kB"),
        (1 << 40, "1TB"),
        (-1, "-1"),
    ],
)
def test_postgresql_sizes_are_exact(value: int, text: str) -> None:
    assert pg_size(value) == text


def test_database_settings_leave_out_what_is_off() -> None:
    assert database_settings(READ_LIMITS) == {
        "statement_timeout": "5min",
        "lock_timeout": "10s",
        "idle_in_transaction_session_timeout": "1min",
        "idle_session_timeout": "1h",
        "temp_file_limit": "1GB",
    }
    relaxed = replace(WRITE_LIMITS, lock_timeout=timedelta(0), temp_file_limit=-1)
    assert set(database_settings(relaxed)) == {
        "statement_timeout",
        "idle_in_transaction_session_timeout",
        "idle_session_timeout",
    }


@pytest.mark.parametrize(
    ("max_connections", "superuser", "reserved", "usable", "target", "identity"),
    [
        (100, 3, 0, 92, 46, 11),  # PostgreSQL's defaults
        (200, 3, 0, 192, 96, 24),
        (500, 3, 10, 482, 241, 60),  # PostgreSQL 16's reserved_connections too
        (10, 3, 0, 2, 1, 1),  # a tiny server still admits one
        (5, 3, 0, 1, 1, 1),
    ],
)
def test_auto_is_a_share_that_leaves_the_last_slots(
    max_connections: int, superuser: int, reserved: int, usable: int, target: int, identity: int
) -> None:
    shares = connection_shares(max_connections, superuser, reserved)
    assert (shares.usable, shares.per_target, shares.per_identity) == (usable, target, identity)
    # Nobody alone reaches what ordinary roles can have.
    assert shares.per_identity <= shares.per_target <= shares.usable
