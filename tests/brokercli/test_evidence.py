"""How ``dbaccess audit access`` shows a statement's columns (pure)."""

from __future__ import annotations

from brokercli.commands.evidence import _columns


def _column(relation: str, column: str, action: str, state: str) -> dict[str, str]:
    return {"relation": relation, "column": column, "action": action, "state": state}


def test_columns_say_what_was_read_written_and_filtered_by() -> None:
    record = {
        "columns": [
            _column("public.customers", "email", "read", "masked"),
            _column("public.customers", "id", "read", "clear"),
            _column("public.orders", "status", "write", "clear"),
            _column("public.customers", "ssn", "filter", "exempt"),
            _column("public.orders", "", "read", "clear"),
        ]
    }
    assert _columns(record) == (
        "public.customers.email [masked], public.customers.id, write public.orders.status, "
        "filter public.customers.ssn [exempt], public.orders"
    )
