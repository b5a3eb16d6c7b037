"""JSON log lines: one object per record, with the ids it concerns as fields."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from server.logs import JsonLines


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("server.x", logging.INFO, __file__, 1, message, args, None)
    rec.__dict__.update(extra)
    return rec


@pytest.mark.parametrize(
    ("rec", "ids"),
    [
        (record("plain"), {}),
        (
            record("closing: %s", "eof", connection_id="c-1", session_id="s-0123456789ab"),
            {"connection_id": "c-1", "session_id": "s-0123456789ab"},
        ),
        # Named in the message only: the broker's own id forms are recognised.
        (
            record("session %s ended, request %s used", "s-a1b2c3d4e5f6", "r-0a0b0c0d0e0f"),
            {"session_id": "s-a1b2c3d4e5f6", "request_id": "r-0a0b0c0d0e0f"},
        ),
        (record("a word like s-abc is no id"), {}),
    ],
)
def test_ids_become_fields(rec: logging.LogRecord, ids: dict[str, str]) -> None:
    line = json.loads(JsonLines().format(rec))
    assert {k: line[k] for k in ("level", "logger")} == {"level": "INFO", "logger": "server.x"}
    assert {k: v for k, v in line.items() if k.endswith("_id")} == ids


def test_a_traceback_stays_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = record("failed")
        rec.exc_info = sys.exc_info()
    text = JsonLines().format(rec)
    assert "\n" not in text
    assert "ValueError: boom" in json.loads(text)["exception"]
