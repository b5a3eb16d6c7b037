"""The CLI's one error type: a message, a hint and the exit code to leave with.

The CLI prints ``dbaccess: error: MESSAGE``; a message that comes from the
broker or the gateway may already start with ``dbaccess:`` (the gateway's
errors to psql do), so the prefix is dropped here, once for every path.
"""

from __future__ import annotations

import re
from typing import Any

from brokercli.exit_codes import ExitCode


class CliError(Exception):
    """``details`` is the broker's JSON error body, when the error came from the broker."""

    def __init__(
        self,
        message: str,
        *,
        code: ExitCode = ExitCode.ERROR,
        hint: str | None = None,
        details: dict[str, Any] | None = None,
    ):
        message = unprefixed(message)
        super().__init__(message)
        self.message = message
        self.code = code
        self.hint = unprefixed(hint, "hint") if hint else hint
        self.details = details or {}


def unprefixed(text: str, *words: str) -> str:
    """``text`` without leading ``dbaccess:`` (and ``error:`` or ``words``) labels."""
    labels = "|".join(re.escape(w) for w in ("dbaccess", "error", *words))
    return re.sub(rf"^(?:\s*(?:{labels}):\s*)+", "", text, flags=re.IGNORECASE)
