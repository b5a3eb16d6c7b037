"""Tables without a terminal: full-width columns, one record per line."""

from __future__ import annotations

from typing import Any

import pytest

from brokercli import render


def test_plain_table_keeps_every_value_whole_on_one_line() -> None:
    long_id = "s-" + "0123456789abcdef" * 8
    lines = render.plain_table(
        ["id", "reason", "end reason"],
        [
            [long_id, "INC-7\nsecond line", None],
            ["s-1", ["a", "b"], "client ended the session"],
        ],
    )
    assert lines == [
        "id" + " " * (len(long_id) - 2) + "  reason              end reason",
        long_id + "  INC-7\\nsecond line",
        "s-1" + " " * (len(long_id) - 3) + "  a, b                client ended the session",
    ]


def test_table_without_a_terminal_is_plain(capsys: pytest.CaptureFixture[str]) -> None:
    render.table(["id", "target"], [["s-" + "f" * 200, "demo"]])
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "id" + " " * 200 + "  target",
        "s-" + "f" * 200 + "  demo",
    ]


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        ({"scope": "read", "reason": None, "n": 3}, "scope=read n=3"),
        ({"groups": ["dev", "admin"], "empty": []}, "groups=dev,admin"),
        ({"client": {"command": "exec", "os_user": "ada"}}, "client=(command=exec os_user=ada)"),
        ("plain", "plain"),
        (None, ""),
    ],
)
def test_details_are_key_value_pairs_not_json(data: Any, shown: str) -> None:
    assert render.pairs(data) == shown
