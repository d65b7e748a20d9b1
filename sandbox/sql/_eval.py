"""Evaluate an allow-listed predicate tree on one row of plain values, with SQL's NULL logic.

Used for HAVING (on released, noisy rows in the gateway) and for WHERE in the notebook's mock
mode (on mock rows). Only the node types the analyser lets into WHERE and HAVING exist here;
anything else raises, it never guesses. Numbers are DOUBLEs as in the engine
(``sandbox.engine_sql.where_tree``): x / 0 is +-inf, 0 / 0 is NaN, NaN sorts above every number.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping

from sqlglot import exp

_COMPARE: dict[type[exp.Expression], Callable[[object, object], bool]] = {
    exp.EQ: operator.eq,
    exp.NEQ: operator.ne,
    exp.LT: operator.lt,
    exp.LTE: operator.le,
    exp.GT: operator.gt,
    exp.GTE: operator.ge,
}
_ARITH: dict[type[exp.Expression], Callable[[float, float], float]] = {
    exp.Add: operator.add,
    exp.Sub: operator.sub,
    exp.Mul: operator.mul,
    exp.Div: operator.truediv,
}


def _number(value: object) -> object:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return value
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def evaluate(node: exp.Expression, row: Mapping[str, object]) -> object:
    """The value of ``node`` for ``row`` (column name -> value); None is SQL NULL."""
    if isinstance(node, (exp.Paren, exp.Where, exp.Having)):
        return evaluate(node.this, row)
    if isinstance(node, exp.Column):
        return _number(row.get(node.name))
    if isinstance(node, exp.Literal):
        return str(node.this) if node.is_string else float(str(node.this))
    if isinstance(node, exp.Boolean):
        return bool(node.this)
    if isinstance(node, exp.Null):
        return None
    if isinstance(node, exp.Neg):
        value = evaluate(node.this, row)
        return None if value is None else -value  # type: ignore[operator]
    if type(node) in _ARITH:
        return _arith(node, row)
    if isinstance(node, exp.And):
        return _and(evaluate(node.this, row), evaluate(node.expression, row))
    if isinstance(node, exp.Or):
        return _or(evaluate(node.this, row), evaluate(node.expression, row))
    if isinstance(node, exp.Not):
        value = evaluate(node.this, row)
        return None if value is None else not value
    if isinstance(node, exp.Is):
        return evaluate(node.this, row) is None
    if type(node) in _COMPARE:
        return _compare(_COMPARE[type(node)], evaluate(node.this, row), evaluate(node.expression, row))
    if isinstance(node, exp.In):
        left = evaluate(node.this, row)
        results = [_compare(operator.eq, left, evaluate(v, row)) for v in node.expressions]
        return True if True in results else (None if None in results else False)
    if isinstance(node, exp.Between):
        value = evaluate(node.this, row)
        low = _compare(operator.ge, value, evaluate(node.args["low"], row))
        high = _compare(operator.le, value, evaluate(node.args["high"], row))
        return _and(low, high)
    raise ValueError(f"cannot evaluate {type(node).__name__}")  # unreachable after the analyser


def _arith(node: exp.Expression, row: Mapping[str, object]) -> object:
    left, right = evaluate(node.this, row), evaluate(node.expression, row)
    if left is None or right is None:
        return None
    try:
        return _ARITH[type(node)](left, right)  # type: ignore[arg-type]
    except ZeroDivisionError:  # IEEE, as DuckDB's DOUBLE division: x / 0 = +-inf, 0 / 0 = NaN
        return math.nan if left == 0 or math.isnan(left) else math.copysign(math.inf, left)  # type: ignore[arg-type]
    except (OverflowError, TypeError):
        return None


def _order(value: object) -> object:
    """DuckDB's order of DOUBLEs: NaN equals NaN and is above every other number."""
    if isinstance(value, float):
        return (1, 0.0) if math.isnan(value) else (0, value)
    return value


def _compare(op: Callable[[object, object], bool], left: object, right: object) -> object:
    if left is None or right is None:
        return None
    try:
        if isinstance(left, float) and isinstance(right, float):
            return op(_order(left), _order(right))
        return op(left, right)
    except TypeError:
        return None


def _and(left: object, right: object) -> object:
    if left is False or right is False:
        return False
    if left is None or right is None:
        return None
    return True


def _or(left: object, right: object) -> object:
    if left is True or right is True:
        return True
    if left is None or right is None:
        return None
    return False
