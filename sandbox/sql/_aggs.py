"""The aggregates of the subset: which node is which aggregate, and what each one takes.

COUNT(*), COUNT(col), SUM(col), AVG(col); the spread VAR_POP / VAR_SAMP (VARIANCE) /
STDDEV_POP / STDDEV_SAMP (STDDEV) of a numeric column; the order statistics MEDIAN(col),
QUANTILE_CONT(col, q), PERCENTILE_CONT(q) WITHIN GROUP (ORDER BY col), MIN(col), MAX(col) of a
numeric column; and COUNT(DISTINCT <privacy unit>), which counts units (people) and is the
only place the unit's id column may be named.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from sqlglot import exp

from sandbox.errors import BadRequest
from sandbox.sql._hints import function_message
from sandbox.sql._keys import unwrap
from sandbox.sql._scope import Scope
from sandbox.sql.plan import Aggregate, AggregateKind

_SIMPLE: dict[type[exp.Expression], AggregateKind] = {
    exp.Count: "count",
    exp.Sum: "sum",
    exp.Avg: "avg",
    exp.VariancePop: "var_pop",
    exp.Variance: "var_samp",
    exp.StddevPop: "stddev_pop",
    exp.StddevSamp: "stddev_samp",
    exp.Stddev: "stddev_samp",  # DuckDB's STDDEV is the sample standard deviation
    exp.Median: "quantile",
    exp.PercentileCont: "quantile",
    exp.Min: "min",
    exp.Max: "max",
}
_SQL_NAME = {
    exp.Count: "COUNT", exp.Sum: "SUM", exp.Avg: "AVG", exp.VariancePop: "VAR_POP", exp.Variance: "VAR_SAMP",
    exp.StddevPop: "STDDEV_POP", exp.StddevSamp: "STDDEV_SAMP", exp.Stddev: "STDDEV", exp.Median: "MEDIAN",
    exp.PercentileCont: "QUANTILE_CONT", exp.Min: "MIN", exp.Max: "MAX",
}
_PREFIX = {exp.Median: "median", exp.PercentileCont: "quantile", exp.Stddev: "stddev", exp.Variance: "var_samp"}
# the kinds the gateway's planner can measure; the others are refused as before
AVAILABLE: frozenset[str] = frozenset(
    {"count", "sum", "avg", "var_pop", "var_samp", "stddev_pop", "stddev_samp", "count_units", "quantile", "min", "max"}
)
QUANTILE_EXAMPLE = "e.g. MEDIAN(age), QUANTILE_CONT(age, 0.9) or PERCENTILE_CONT(0.9) WITHIN GROUP (ORDER BY age)"


def is_aggregate(node: exp.Expression) -> bool:
    return type(node) in _SIMPLE or isinstance(node, exp.WithinGroup)


def classify(node: exp.Expression, scope: Scope) -> Aggregate | None:
    """The aggregate a (column-resolved) SELECT or HAVING node stands for, or None if it is none.

    The returned aggregate carries its default output name; the caller replaces it by an alias.
    """
    agg = _classify(node, scope)
    if agg is not None and agg.kind not in AVAILABLE:
        if agg.kind == "count_units":
            raise BadRequest("COUNT(DISTINCT ...) is not available", "distinct_not_allowed")
        target = node.this if isinstance(node, exp.WithinGroup) else node
        raise BadRequest(function_message(target, "expressions"), "unsupported_function")
    return agg


def _classify(node: exp.Expression, scope: Scope) -> Aggregate | None:
    if isinstance(node, exp.WithinGroup):
        return _within_group(node, scope)
    kind = _SIMPLE.get(type(node))
    if kind is None:
        return None
    name = _SQL_NAME[type(node)]
    arg = node.this
    arg = unwrap(arg) if arg is not None else None
    if kind == "count" and isinstance(arg, exp.Star):
        return Aggregate("count", None, "count")
    if kind == "count" and isinstance(arg, exp.Distinct):
        return _count_units(arg, scope)
    q: float | None = None
    if type(node) is exp.PercentileCont:
        q = _quantile_literal(node.args.get("expression"))
    elif kind == "quantile":
        q = 0.5
    elif kind in ("min", "max"):
        q = 0.0 if kind == "min" else 1.0
    if not isinstance(arg, exp.Column):
        what = "COUNT(*) counts rows" if kind == "count" else f"e.g. {name}(age)"
        raise BadRequest(
            f"{name} takes one plain column ({what}); compute expressions of aggregates "
            "client-side and bin values with GROUP BY FLOOR(col / w) * w",
            "unsupported_expression",
        )
    column = arg.name
    if kind != "count" and not scope.dataset.columns[column].numeric:
        raise BadRequest(
            f"{name} needs an int or float column; {column} is a category: count its values "
            f"with SELECT {column}, COUNT(*) ... GROUP BY {column}",
            "not_numeric",
        )
    if kind != "count" and scope.dataset.columns[column].bounds is None:
        raise BadRequest(
            f"{name} needs declared bounds; {column} has none (its values are codes): count them with "
            f"SELECT {column}, COUNT(*) ... GROUP BY {column}",
            "unbounded_column",
        )
    prefix = _PREFIX.get(type(node), kind)
    return Aggregate(kind, column, f"{prefix}_{column}", q)


def _count_units(distinct: exp.Distinct, scope: Scope) -> Aggregate:
    column = distinct.expressions[0]
    unit = scope.dataset.privacy_unit
    if unit == "row":
        raise BadRequest(
            f"COUNT(DISTINCT ...) is not available on {scope.dataset.id}: each row is its own privacy "
            "unit there, so COUNT(*) counts units",
            "distinct_not_allowed",
        )
    if not isinstance(column, exp.Column) or column.name != unit:
        raise BadRequest(
            f"COUNT(DISTINCT col) is only available for the privacy unit: COUNT(DISTINCT {unit}) counts "
            f"the units (people) of {scope.dataset.id}. Distinct values of other columns can single out "
            "rows; count rows per value with GROUP BY col and COUNT(*)",
            "distinct_not_allowed",
        )
    return Aggregate("count_units", None, "count_units")


def _within_group(node: exp.WithinGroup, scope: Scope) -> Aggregate:
    inner = node.this
    order = node.expression
    if (
        type(inner) is not exp.PercentileCont
        or inner.args.get("expression") is not None
        or not isinstance(order, exp.Order)
        or len(order.expressions) != 1
    ):
        raise BadRequest(
            f"WITHIN GROUP is only available as PERCENTILE_CONT(q) WITHIN GROUP (ORDER BY col); {QUANTILE_EXAMPLE}",
            "unsupported_function",
        )
    ordered = order.expressions[0]
    if ordered.args.get("desc"):
        raise BadRequest(
            "PERCENTILE_CONT(q) WITHIN GROUP (ORDER BY col DESC) is not available; write ORDER BY col "
            "and use 1 - q",
            "unsupported_expression",
        )
    q = _quantile_literal(inner.this)
    rewritten = exp.PercentileCont(this=ordered.this.copy(), expression=exp.Literal.number(q))
    agg = _classify(rewritten, scope)
    assert agg is not None
    node.replace(rewritten)  # canonical text: QUANTILE_CONT(col, q)
    return agg


def _quantile_literal(node: exp.Expression | None) -> float:
    node = unwrap(node) if node is not None else None
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            value = Decimal(str(node.this))
        except InvalidOperation:
            value = Decimal(-1)
        if value.is_finite() and 0 <= value <= 1:
            return float(value)
    raise BadRequest(
        f"a quantile takes one number q from 0 to 1 as a literal; {QUANTILE_EXAMPLE}",
        "unsupported_expression",
    )
