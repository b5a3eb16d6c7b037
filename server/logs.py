"""The broker's log lines: plain for a terminal (default) or JSON lines (``--log-format json``).

A JSON line holds the time (UTC, ISO 8601), level, logger, message and, when
the line is about one, the ``session_id``, ``request_id`` and
``connection_id`` it concerns, as fields of their own so that a log pipeline
can filter on them.  They come from the record's ``extra`` (the gateway's
connections log with theirs), else from the ids the message names (``s-…`` a
session, ``r-…`` an access request, as the broker makes them).
An exception's traceback is one field, so every record stays one line.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Final

FORMATS: Final = ("plain", "json")
PLAIN: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
IDS: Final = ("session_id", "request_id", "connection_id")
_NAMED = {
    "session_id": re.compile(r"\bs-[0-9a-f]{12}\b"),
    "request_id": re.compile(r"\br-[0-9a-f]{12}\b"),
}


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for key in IDS:
            value = getattr(record, key, None)
            if value is None and key in _NAMED:
                found = _NAMED[key].search(message)
                value = found.group() if found else None
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup(verbose: bool, fmt: str = "plain") -> None:
    """Log to stderr at INFO (``verbose``) or WARNING, as plain lines or JSON lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines() if fmt == "json" else logging.Formatter(PLAIN))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
