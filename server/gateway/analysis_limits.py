"""What one statement may cost the gateway to analyse: its size and its CPU time.

Two limits bound the work the gateway does for a statement before it decides
on it, whatever the client sends:

* ``max_statement_size`` (bytes of the statement's text, as the client sent it
  in a Query or Parse message): a longer text is refused before anything
  decodes, tokenizes or parses it (:func:`oversize`);
* ``cpu_budget`` (CPU seconds of the thread that analyses it): an analysis that
  runs past it stops, and the statement is refused (:func:`over_budget`) —
  fail closed: a statement the gateway could not finish reading never runs.

Both refusals carry SQLSTATE 54000 (program_limit_exceeded: the statement is
too large or too complex for the gateway, not forbidden) and a hint naming the
setting that raises the limit.

How the default size was chosen (``bench/analysis_cost.py`` measures it): the
analysis costs time and memory linear in the text, but how much per byte
depends on its shape.  Long literals, identifiers and comments cost little
(under 0.5 ms and a few hundred bytes of memory per kB); text made of one-byte
tokens (deep nesting, long IN lists, thousands of statements in one Query) is
the costliest, about 1.6 ms of CPU and 160 kB of memory per kB, almost all of it
in tokenizing.  At 256 KiB the costliest shape stays well inside the default
one-second CPU budget (about 0.4 s) and about 45 MB of memory, while statements
people write, and large literals such as a JSON document, fit.

Analysis that can take more than a few milliseconds does not run on the event
loop, nor hold its interpreter lock: see ``server.gateway.server``
(``OFFLOAD_BYTES``) and ``server.gateway.analysis_pool``.  Where a worker
process reading a statement dies, the statement is refused too
(:func:`analysis_failed`, 54000).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from server.gateway.guardrails import Decision

# Imported by the broker's configuration, which must not load the analysis
# (sqlglot) to read a file: the decisions import guardrails when they are made.

DEFAULT_MAX_STATEMENT_SIZE: Final = 256 * 1024
DEFAULT_CPU_BUDGET: Final = 1.0
SQLSTATE: Final = "54000"
TOO_LARGE: Final = "gateway.statement_too_large"
OVER_BUDGET: Final = "gateway.analysis_budget"
FAILED: Final = "gateway.analysis_failed"
RULES: Final = frozenset({TOO_LARGE, OVER_BUDGET, FAILED})
# The broker settings (server.config) that raise them.
SIZE_SETTING: Final = "gateway_max_statement_size"
BUDGET_SETTING: Final = "gateway_analysis_cpu_budget"


@dataclass(frozen=True)
class AnalysisLimits:
    max_statement_size: int = DEFAULT_MAX_STATEMENT_SIZE
    cpu_budget: float = DEFAULT_CPU_BUDGET

    def __post_init__(self) -> None:
        if self.max_statement_size < 1 or not self.cpu_budget > 0:
            raise ValueError("analysis limits must be above zero")


DEFAULT_ANALYSIS_LIMITS: Final = AnalysisLimits()


def statement_size(kind: int, data: bytes) -> int:
    """Bytes of the statement text in a Query (``Q``) or Parse (``P``) message body,
    found without decoding it (a malformed body counts whole)."""
    if kind == ord("Q"):
        end = data.find(b"\0")
        return end if end >= 0 else len(data)
    name_end = data.find(b"\0")
    if name_end < 0:
        return len(data)
    end = data.find(b"\0", name_end + 1)
    return (end if end >= 0 else len(data)) - name_end - 1


# How much of an oversize statement refusals and recordings keep, decoded.
OVERSIZE_HEAD: Final = 16_000


def oversize_head(kind: int, body: bytes, limits: AnalysisLimits) -> str | None:
    """For a Query (``Q``) or Parse (``P``) body whose text is over the size limit:
    its beginning, decoded, as the refusal's records show it -- the only part
    of it anything reads (the guard refuses it; hooks before the guard skip
    it).  None for a text within the limit."""
    if len(body) <= limits.max_statement_size:
        return None  # the text is shorter than the whole body
    if statement_size(kind, body) <= limits.max_statement_size:
        return None
    return body[:OVERSIZE_HEAD].decode("utf-8", "replace") + "…"


def oversize(size: int, limits: AnalysisLimits) -> Decision | None:
    """The refusal of a statement text of ``size`` bytes, or None when it fits."""
    from server.gateway.guardrails import Decision, Outcome

    limit = limits.max_statement_size
    if size <= limit:
        return None
    return Decision(
        Outcome.BLOCK,
        TOO_LARGE,
        f"the statement is {size} bytes long, more than the gateway analyses "
        f"({limit} bytes, {SIZE_SETTING})",
        "split it into smaller statements, pass large values as bind parameters or "
        f"with COPY, or ask an administrator to raise {SIZE_SETTING} in "
        "the broker's configuration",
        None,
    )


def over_budget(limits: AnalysisLimits) -> Decision:
    """The refusal of a statement whose analysis ran past the CPU budget."""
    from server.gateway.guardrails import Decision, Outcome

    return Decision(
        Outcome.BLOCK,
        OVER_BUDGET,
        f"analysing the statement took more than {limits.cpu_budget:g}s of CPU ({BUDGET_SETTING})",
        "split it into smaller, simpler statements, or ask an administrator to raise "
        f"{BUDGET_SETTING} in the broker's configuration",
        None,
    )


def analysis_failed(reason: str) -> Decision:
    """The refusal of a statement whose analysis could not finish (the process
    that read it ended): fail closed."""
    from server.gateway.guardrails import Decision, Outcome

    return Decision(
        Outcome.BLOCK,
        FAILED,
        f"the gateway could not finish reading the statement ({reason}); it was not run",
        "try again; if it keeps failing, split it into smaller statements or tell an "
        "administrator (the broker log has the details)",
        None,
    )
