"""The CLI's one error type: a message, a hint and the exit code to leave with."""

from __future__ import annotations

from brokercli.exit_codes import ExitCode


class CliError(Exception):
    def __init__(self, message: str, *, code: ExitCode = ExitCode.ERROR, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.hint = hint
