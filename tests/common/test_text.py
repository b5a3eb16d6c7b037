"""What a reviewer is shown of a statement: every character, none hidden."""

from __future__ import annotations

import pytest

from common.text import invisible, reveal


@pytest.mark.parametrize(
    ("char", "hidden"),
    [
        ("a", False),
        (" ", False),
        ("\n", False),
        ("\t", False),
        ("é", False),
        ("€", False),
        ("\x1b", True),  # ESC: a terminal's commands
        ("\r", True),  # back to the line's start, over what was printed
        ("\x08", True),
        ("\u202e", True),  # right-to-left override
        ("\u2066", True),  # left-to-right isolate
        ("\u200b", True),  # zero-width space
        ("\u00ad", True),  # soft hyphen
        ("\ufeff", True),
        ("\u00a0", True),  # looks like a space, is part of a name in SQL
        ("\u2028", True),
        ("\ue000", True),  # private use
    ],
)
def test_invisible(char: str, hidden: bool) -> None:
    assert invisible(char) is hidden


def test_reveal_shows_code_points_and_keeps_the_rest() -> None:
    assert reveal("a\u202eb\nc") == "a[U+202E]b\nc"
    assert reveal("x\x1by", lambda c: "?") == "x?y"
