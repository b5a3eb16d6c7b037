"""The tools' interface and their pure parts: schemas, argument checks, rules named in
refusals, the shape of a review.  (The tools at work are tested end to end with the
MCP SDK's client: tests/brokercli/test_mcp_e2e.py, tests/server/mcp/test_http_e2e.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from common.mcp.tools import TOOLS, ToolError, Tools, _literal, _quote, _review, rule_in


@pytest.mark.parametrize("spec", TOOLS, ids=lambda t: t.name)
def test_every_tool_has_a_closed_input_schema_and_a_handler(spec: Any) -> None:
    schema = spec.input_schema
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert set(schema["required"]) <= set(schema["properties"])
    assert spec.output_schema["type"] == "object"
    assert callable(getattr(Tools, f"tool_{spec.name}"))
    assert spec.description.strip()


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("dbaccess: DROP is not allowed here (guardrails.block.ddl)", "guardrails.block.ddl"),
        ("agents may use only read-only scopes", None),
        ("add --reason (rule: targets.demo.scopes.write.reason_required)",
         "targets.demo.scopes.write.reason_required"),
        ("over the result budget (limits.max_result_rows)", "limits.max_result_rows"),
        ("a sentence (not a rule)", None),
    ],
)  # fmt: skip
def test_the_rule_a_refusal_names(text: str, rule: str | None) -> None:
    assert rule_in(text) == rule


def test_a_tool_error_carries_message_rule_hint_and_sqlstate() -> None:
    err = ToolError("refused (guardrails.no_drop)", hint="use a migration", sqlstate="42501")
    assert err.to_json() == {
        "error": {
            "message": "refused (guardrails.no_drop)",
            "rule": "guardrails.no_drop",
            "hint": "use a migration",
            "sqlstate": "42501",
        }
    }
    assert ToolError("gone", request_id="r-1").to_json() == {
        "error": {"message": "gone", "request_id": "r-1"}
    }


class _NoBroker:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the broker was asked ({name}) before the arguments were checked")


@pytest.mark.parametrize(
    ("tool", "arguments", "rule"),
    [
        ("drop_policy", {}, "mcp.unknown_tool"),
        ("query", {"target": "demo", "sql": "select 1", "role": "postgres"}, "mcp.arguments"),
        ("query", {"target": "demo", "sql": ""}, "mcp.arguments"),
        ("query", {"target": 7, "sql": "select 1"}, "mcp.arguments"),
        ("review_status", {"request_id": None}, "mcp.arguments"),
        ("wait_for_review", {"request_id": "r-1", "timeout_seconds": "soon"}, "mcp.arguments"),
    ],
)
def test_arguments_are_checked_before_anything_is_asked(
    tool: str, arguments: dict[str, Any], rule: str
) -> None:
    with pytest.raises(ToolError) as err:
        Tools(_NoBroker()).call(tool, arguments)  # type: ignore[arg-type]
    assert err.value.rule == rule


def test_a_review_as_the_tools_show_it() -> None:
    request = {
        "id": "r-1", "status": "approved", "target": "demo", "scope": "fix",
        "statement_sha256": "ab" * 32, "approvals_count": 2, "min_approvals": 2,
        "decided_by": "bob", "note": None, "expires_at": None, "grant_expires_at": None,
    }  # fmt: skip
    shown = _review(request, timed_out=False)
    assert shown["reviewer_command"] == "dbaccess approve r-1"
    assert (shown["approvals"], shown["approvals_required"], shown["timed_out"]) == (2, 2, False)


@pytest.mark.parametrize(
    ("name", "quoted", "literal"),
    [("orders", '"orders"', "'orders'"), ('we"ird', '"we""ird"', "'we\"ird'"),
     ("o'brien", '"o\'brien"', "'o''brien'")],
)  # fmt: skip
def test_names_and_literals_in_describe_are_quoted(name: str, quoted: str, literal: str) -> None:
    assert (_quote(name), _literal(name)) == (quoted, literal)
