"""WHERE: the shapes that node types alone do not pin down, and a small type check.

Node types are already allow-listed (``_allow``) and columns resolved (``_scope``). Here:
IN takes a list of literals, IS takes only NULL, numbers are finite, and the predicate is
well typed (numbers with numbers, categories with strings, conditions under AND/OR/NOT),
so that a query the engine could not run is refused before any budget is spent.
"""

from __future__ import annotations

import math
from typing import Literal

from sqlglot import exp

from sandbox.errors import BadRequest
from sandbox.sql._hints import WHERE_HINT, describe, show
from sandbox.sql._keys import unwrap
from sandbox.sql._scope import Scope

Kind = Literal["number", "string", "boolean", "null"]

_COMPARISONS = (exp.EQ, exp.NEQ, exp.LT, exp.LTE, exp.GT, exp.GTE)
_ARITHMETIC = (exp.Add, exp.Sub, exp.Mul, exp.Div)


def check_where(where: exp.Where, scope: Scope) -> None:
    """Refuse a WHERE whose shape or types the subset does not accept."""
    for node in where.walk():
        _check_shape(node)
    kind = _kind(where.this, scope)
    if kind not in ("boolean", "null"):
        raise BadRequest(
            f"WHERE needs a condition, not a {kind}: e.g. WHERE age >= 18 AND sex = 'female'",
            "type_mismatch",
        )


def _check_shape(node: exp.Expression) -> None:
    if isinstance(node, exp.In) and not (node.expressions and all(_is_literal(v) for v in node.expressions)):
        raise BadRequest(
            "IN takes a non-empty list of literals, e.g. sex IN ('male', 'female')",
            "unsupported_expression",
        )
    if isinstance(node, exp.Is) and not isinstance(node.expression, exp.Null):
        raise BadRequest(
            "IS only takes NULL here: write col IS NULL or col IS NOT NULL",
            "unsupported_expression",
        )
    if isinstance(node, exp.Literal) and not node.is_string and not _finite(node.this):
        raise BadRequest(
            f"{show(str(node.this))} is not a finite number; compare with ordinary numbers",
            "unsupported_expression",
        )


def _is_literal(node: exp.Expression) -> bool:
    node = unwrap(node)
    if isinstance(node, exp.Neg):
        node = unwrap(node.this)
        return isinstance(node, exp.Literal) and not node.is_string
    return isinstance(node, (exp.Literal, exp.Boolean, exp.Null))


def _finite(text: object) -> bool:
    try:
        return math.isfinite(float(str(text)))
    except ValueError:
        return False


def _kind(node: exp.Expression, scope: Scope) -> Kind:
    """The type of an allow-listed WHERE expression; refuses mismatched operands."""
    node = unwrap(node)
    if isinstance(node, exp.Column):
        return "number" if scope.dataset.columns[node.name].numeric else "string"
    if isinstance(node, exp.Literal):
        return "string" if node.is_string else "number"
    if isinstance(node, exp.Boolean):
        return "boolean"
    if isinstance(node, exp.Null):
        return "null"
    if isinstance(node, exp.Neg):
        _expect(node.this, "number", node, scope)
        return "number"
    if isinstance(node, _ARITHMETIC):
        _expect(node.this, "number", node, scope)
        _expect(node.expression, "number", node, scope)
        return "number"
    if isinstance(node, (exp.And, exp.Or)):
        _expect(node.this, "boolean", node, scope)
        _expect(node.expression, "boolean", node, scope)
        return "boolean"
    if isinstance(node, exp.Not):
        _expect(node.this, "boolean", node, scope)
        return "boolean"
    if isinstance(node, exp.Is):
        _kind(node.this, scope)
        return "boolean"
    return _compared(node, scope)


def _compared(node: exp.Expression, scope: Scope) -> Kind:
    if isinstance(node, _COMPARISONS):
        others = [node.expression]
    elif isinstance(node, exp.In):
        others = list(node.expressions)
    elif isinstance(node, exp.Between):
        others = [node.args["low"], node.args["high"]]
    else:  # unreachable after the allow-list; refuse rather than guess
        raise BadRequest(f"{describe(node)} is not available in WHERE; {WHERE_HINT}", "unsupported_expression")
    left = _kind(node.this, scope)
    for other in others:
        right = _kind(other, scope)
        if "null" not in (left, right) and left != right:
            raise BadRequest(
                f"{describe(node)} compares a {left} with a {right}; compare numeric columns "
                "with numbers and category columns with quoted strings, e.g. sex = 'female'",
                "type_mismatch",
            )
    return "boolean"


def _expect(node: exp.Expression, wanted: Kind, parent: exp.Expression, scope: Scope) -> None:
    kind = _kind(node, scope)
    if kind not in (wanted, "null"):
        raise BadRequest(
            f"{describe(parent)} needs {wanted} operands, but {describe(node)} is a {kind}; {WHERE_HINT}",
            "type_mismatch",
        )
