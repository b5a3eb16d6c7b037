"""The CLI's one error type: a message, a hint and the exit code to leave with."""

from __future__ import annotations

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
        super().__init__(message)
        self.message = message
        self.code = code
        self.hint = hint
        self.details = details or {}
