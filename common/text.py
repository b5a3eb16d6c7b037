"""Text from others shown to a person who decides on it: nothing in it stays hidden.

A statement under review (or a reason) is shown to its reviewer in the web
inbox, in Slack and in a terminal.  Some characters show nothing there or
change what is shown around them: bidi controls that reorder the rest of a line
(Trojan Source), zero-width and other format characters, and control
characters, ESC above all, which a terminal reads as commands to erase or
move over what was printed.  :func:`invisible` says which, and :func:`reveal`
replaces each with something visible (its code point), so that a reviewer sees
every character that runs, in the order it runs.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable

# Format (bidi controls, zero-width), control, private-use, unassigned,
# surrogate, line/paragraph separator and space characters.
_CATEGORIES = frozenset({"Cf", "Cc", "Co", "Cn", "Cs", "Zl", "Zp", "Zs"})


def invisible(char: str) -> bool:
    """A character that shows nothing, or reorders or hides what follows it;
    newline, tab and the plain space are not."""
    if char in "\n\t ":
        return False
    return unicodedata.category(char) in _CATEGORIES


def code_point(char: str) -> str:
    return f"U+{ord(char):04X}"


def reveal(text: str, shown: Callable[[str], str] = lambda c: f"[{code_point(c)}]") -> str:
    """``text`` with each :func:`invisible` character replaced by ``shown(char)``."""
    return "".join(shown(c) if invisible(c) else c for c in text)
