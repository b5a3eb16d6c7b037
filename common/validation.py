"""A request the API could not validate, as one line for a person to read.

The API answers such a request with :func:`validation_message` as its message,
and the CLI reads an older broker's list of errors (FastAPI's ``detail``) the
same way, so the person sees the same words whichever broker answered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def validation_message(errors: Iterable[Mapping[str, Any]]) -> str:
    """pydantic's validation errors as one line: ``since: Input should be ...; ttl: ...``.

    The API answers a request it cannot validate with this as its message, and the
    CLI reads an old broker's list of errors (FastAPI's ``detail``) the same way.
    """
    parts = []
    for err in list(errors)[:3]:
        where = ".".join(str(p) for p in err.get("loc") or () if p not in ("body", "query", "path"))
        what = str(err.get("msg") or "invalid value")
        parts.append(f"{where}: {what}" if where else what)
    return "invalid request: " + "; ".join(parts) if parts else "invalid request"
