"""Whether a WHERE restricts rows: an abstract evaluation over the rows it filters.

``_predicate`` gives each condition one of ``_Pred``'s values: TRUE or FALSE for
every row, NULL for every row, MAYBE (the same for every row, value not known
here) or ROW (depends on the row).  A predicate restricts rows only if it depends
on the row, or holds for none (``_restricts``).  Row-independent parts
(``true``, ``1=1``, ``now() > '2000-01-01'``, ``EXISTS (SELECT 1)``, ``$1``) may be
true for every row, so they do not count, and neither do ``x = x``,
``x LIKE '%'``, ``x IS NULL OR x IS NOT NULL`` (complementary branches) or an OR
with any such branch.  Constants are folded where sqlglot's literals allow it
(``WHERE 2 < 1`` restricts every row away), which is why writes are never cached
by shape (``cache``).  Depth is bounded: past ``_MAX_PRED_DEPTH`` a condition is
MAYBE.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from sqlglot import exp

from server.gateway.sqlcheck.names import _fold


class _Pred(Enum):
    """What a WHERE predicate is, for every row of the table it filters."""

    TRUE = "true"  # holds for every row
    FALSE = "false"  # holds for none
    NULL = "null"  # null for every row: holds for none
    MAYBE = "maybe"  # the same for every row, value not known here
    ROW = "row"  # depends on the row


_MAX_PRED_DEPTH = 200


def _restricts(value: _Pred) -> bool:
    return value in (_Pred.ROW, _Pred.FALSE, _Pred.NULL)


def _predicate(node: exp.Expr, outer: frozenset[str], depth: int) -> _Pred:
    """Abstract evaluation of a WHERE condition over the rows it filters."""
    if depth > _MAX_PRED_DEPTH:
        return _Pred.MAYBE
    if isinstance(node, exp.Paren):
        return _predicate(node.this, outer, depth + 1)
    if isinstance(node, (exp.And, exp.Or)):
        operands = _flatten(node, type(node))
        values = [_predicate(o, outer, depth + 1) for o in operands]
        return _and(values) if isinstance(node, exp.And) else _or(values, operands)
    if isinstance(node, exp.Not):
        inner = _predicate(node.this, outer, depth + 1)
        return {_Pred.TRUE: _Pred.FALSE, _Pred.FALSE: _Pred.TRUE}.get(inner, inner)
    if isinstance(node, exp.Boolean):
        return _Pred.TRUE if node.this else _Pred.FALSE
    if isinstance(node, exp.Null):
        return _Pred.NULL
    if _row_dependent(node, outer):
        return _Pred.TRUE if _self_comparison(node) else _Pred.ROW
    constant = _constant_truth(node)
    return _Pred.MAYBE if constant is None else constant


def _flatten(node: exp.Expr, kind: type[exp.Expr]) -> list[exp.Expr]:
    out: list[exp.Expr] = []
    stack = [node]
    while stack:
        current = stack.pop()
        while isinstance(current, exp.Paren) and isinstance(current.this, kind):
            current = current.this
        if isinstance(current, kind):
            stack.append(current.expression)
            stack.append(current.this)
        else:
            out.append(current)
    return out


def _and(values: list[_Pred]) -> _Pred:
    if _Pred.FALSE in values:
        return _Pred.FALSE
    if _Pred.ROW in values:
        return _Pred.ROW
    if _Pred.NULL in values:
        return _Pred.NULL
    if _Pred.MAYBE in values:
        return _Pred.MAYBE
    return _Pred.TRUE


def _or(values: list[_Pred], operands: list[exp.Expr]) -> _Pred:
    if _Pred.TRUE in values:
        return _Pred.TRUE
    if _Pred.MAYBE in values:
        return _Pred.MAYBE
    if _complementary(operands):
        return _Pred.TRUE
    if _Pred.ROW in values:
        return _Pred.ROW
    if _Pred.NULL in values:
        return _Pred.NULL
    return _Pred.FALSE


def _complementary(operands: list[exp.Expr]) -> bool:
    """``p OR NOT p``, ``x IS NULL OR x IS NOT NULL``, ``x > 5 OR x <= 5``: every
    row, give or take NULLs."""
    seen: dict[Any, bool] = {}
    for operand in operands:
        key, positive = _polarity(operand)
        if seen.get(key, positive) is not positive:
            return True
        seen[key] = positive
    return False


# A comparison and its negation share a key: = and <>, > and <=, < and >=.
_OPPOSITES: dict[type[exp.Expr], tuple[str, bool]] = {
    exp.EQ: ("eq", True),
    exp.NEQ: ("eq", False),
    exp.GT: ("gt", True),
    exp.LTE: ("gt", False),
    exp.LT: ("lt", True),
    exp.GTE: ("lt", False),
}


def _polarity(node: exp.Expr) -> tuple[Any, bool]:
    positive = True
    node = _strip_paren(node)
    while isinstance(node, exp.Not):
        positive = not positive
        node = _strip_paren(node.this)
    if isinstance(node, exp.Is):
        negate = bool(node.args.get("negate"))
        return ("is", node.this, node.expression), positive != negate
    opposite = _OPPOSITES.get(type(node))
    if opposite is not None:
        key, sign = opposite
        return (key, node.this, node.expression), positive == sign
    return node, positive


def _strip_paren(node: exp.Expr) -> exp.Expr:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


_COMPARISONS: dict[type[exp.Expr], str] = {
    exp.EQ: "=",
    exp.NEQ: "<>",
    exp.GT: ">",
    exp.GTE: ">=",
    exp.LT: "<",
    exp.LTE: "<=",
    exp.NullSafeEQ: "=",
    exp.NullSafeNEQ: "<>",
}


def _literal_value(node: exp.Expr) -> tuple[str, Any] | None:
    node = _strip_paren(node)
    if isinstance(node, exp.Cast) and isinstance(_strip_paren(node.this), exp.Literal):
        return None
    if type(node) is exp.Literal:
        if node.is_string:
            return ("str", str(node.this))
        try:
            return ("num", float(str(node.this)))
        except ValueError:
            return None
    if isinstance(node, exp.Neg):
        inner = _literal_value(node.this)
        if inner is not None and inner[0] == "num":
            return ("num", -inner[1])
    if isinstance(node, exp.Boolean):
        return ("bool", bool(node.this))
    return None


def _constant_truth(node: exp.Expr) -> _Pred | None:
    op = _COMPARISONS.get(type(node))
    if op is None:
        return None
    left = _literal_value(node.this)
    right = _literal_value(node.expression)
    if left is None or right is None or left[0] != right[0]:
        return None
    a, b = left[1], right[1]
    if op in ("=", "<>"):
        return _Pred.TRUE if (a == b) == (op == "=") else _Pred.FALSE
    if left[0] != "num":
        return None  # string ordering depends on the collation
    result = {">": a > b, ">=": a >= b, "<": a < b, "<=": a <= b}[op]
    return _Pred.TRUE if result else _Pred.FALSE


def _row_dependent(node: exp.Expr, outer: frozenset[str]) -> bool:
    """Whether ``node`` refers to the rows being changed.  Inside a subquery, a
    column counts when it is unqualified (it may be the outer row's) or qualified
    with one of the ``outer`` names."""
    stack: list[tuple[exp.Expr, bool]] = [(node, False)]
    while stack:
        current, nested = stack.pop()
        if isinstance(current, exp.Column):
            if not isinstance(current.this, exp.Identifier):
                continue
            qualifier = current.args.get("table")
            if not nested or not isinstance(qualifier, exp.Identifier):
                return True
            if _fold(qualifier.this, bool(qualifier.quoted)) in outer:
                return True
            continue
        inside = nested or isinstance(current, (exp.Subquery, exp.Query))
        stack.extend((child, inside) for child in current.iter_expressions())
    return False


def _self_comparison(node: exp.Expr) -> bool:
    if isinstance(node, (exp.EQ, exp.GTE, exp.LTE, exp.NullSafeEQ)):
        return _strip_paren(node.this) == _strip_paren(node.expression)
    if isinstance(node, (exp.Like, exp.ILike)):
        pattern = _strip_paren(node.expression)
        return (
            type(pattern) is exp.Literal and pattern.is_string and set(str(pattern.this)) == {"%"}
        )
    return False
