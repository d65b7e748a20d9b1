"""The allow-lists over sqlglot's syntax tree, and the refusals that explain them.

Three passes, each over every node it is responsible for:

* ``check_structure`` names the constructs that reach individual rows (subqueries, joins,
  windows, DISTINCT, CTEs, samples ...) so that the operator gets a precise code;
* ``check_clauses`` accepts only the SELECT clauses of the subset;
* ``check_nodes`` walks each accepted clause and checks every node's exact type, and every
  argument that node carries, against that clause's allow-list.

The first pass only improves messages; the second and third are what keep the subset closed:
a node type or modifier that is not listed is refused, whatever sqlglot adds in the future.
"""

from __future__ import annotations

from typing import NoReturn

from sqlglot import exp

from sandbox.errors import BadRequest
from sandbox.sql._hints import (
    ARITHMETIC_ON_AGGREGATES,
    CLAUSE_HINTS,
    CLAUSE_NAMES,
    SELECT_HINT,
    describe,
    function_message,
)

_SUBQUERY = (
    "subqueries are not available: they would let one query reach individual rows. "
    "Send one SELECT of aggregates over a dataset, filtering with WHERE on literals"
)
_STRUCTURAL: tuple[tuple[tuple[type[exp.Expression], ...], str, str], ...] = (
    ((exp.Select, exp.Subquery, exp.Exists, exp.SetOperation), "subquery_not_allowed", _SUBQUERY),
    (
        (exp.With, exp.CTE),
        "unsupported_clause",
        "WITH (common table expressions) is not available; write one SELECT over the dataset",
    ),
    (
        (exp.Join, exp.Lateral),
        "join_not_allowed",
        "joins are not available: each query reads one dataset. Query each dataset on its "
        "own and combine the noisy results client-side",
    ),
    (
        (exp.Window, exp.WindowSpec),
        "window_not_allowed",
        "window functions (OVER, WINDOW) are not available: they compute per-row values. "
        "Use GROUP BY with COUNT/SUM/AVG",
    ),
    (
        (exp.Distinct,),
        "distinct_not_allowed",
        "DISTINCT is not available (neither SELECT DISTINCT nor COUNT(DISTINCT col)): "
        "distinct values can single out rows. Use GROUP BY col with COUNT(*) to count rows "
        "per value; COUNT(DISTINCT <privacy unit>) counts people (units)",
    ),
    (
        (exp.Unnest, exp.Values),
        "unsupported_clause",
        "UNNEST and VALUES are not available; FROM takes one dataset id from the catalog",
    ),
    (
        (exp.Pivot,),
        "unsupported_clause",
        "PIVOT / UNPIVOT are not available; use GROUP BY and reshape the result client-side",
    ),
    (
        (exp.TableSample,),
        "unsupported_clause",
        "SAMPLE / TABLESAMPLE are not available: the noise already protects every row. "
        "Query the whole dataset, filtering with WHERE",
    ),
    (
        (exp.Filter,),
        "unsupported_clause",
        "aggregate FILTER (WHERE ...) is not available; put the condition in WHERE",
    ),
)

_ALLOWED_CLAUSES = ("expressions", "from_", "where", "group", "having", "order", "limit")
_CLAUSE_REFUSALS = {
    "qualify": "QUALIFY is not available; filter rows with WHERE",
    "offset": "OFFSET is not available; use ORDER BY ... LIMIT n and skip rows client-side",
    "into": "SELECT ... INTO is not available: nothing is written; send a plain SELECT",
    "locks": "FOR UPDATE / FOR SHARE are not available; send a plain SELECT",
}

_WRAPPERS = (exp.IgnoreNulls, exp.RespectNulls)
_ARITHMETIC = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod, exp.Pow, exp.IntDiv, exp.Neg, exp.DPipe)

_BINARY = ("this", "expression")
_ALLOWED_ARGS: dict[type[exp.Expression], tuple[str, ...]] = {
    exp.Column: ("this", "table", "db", "catalog"),  # qualifiers are judged when resolving
    exp.Identifier: ("this", "quoted"),
    exp.Literal: ("this", "is_string"),
    exp.Boolean: ("this",),
    exp.Null: (),
    exp.Star: (),
    exp.Paren: ("this",),
    exp.Alias: ("this", "alias"),
    exp.Count: ("this", "big_int"),
    exp.Sum: ("this",),
    exp.Avg: ("this",),
    **{cls: ("this",) for cls in (exp.VariancePop, exp.Variance, exp.Stddev, exp.StddevPop, exp.StddevSamp)},
    exp.Median: ("this",),
    exp.Min: ("this",),
    exp.Max: ("this",),
    exp.PercentileCont: ("this", "expression"),
    exp.WithinGroup: ("this", "expression"),
    exp.Distinct: ("expressions",),
    exp.Having: ("this",),
    exp.Floor: ("this",),
    exp.Neg: ("this",),
    exp.Not: ("this",),
    exp.In: ("this", "expressions"),
    exp.Between: ("this", "low", "high"),
    exp.Is: _BINARY,
    exp.Where: ("this",),
    exp.Group: ("expressions",),
    exp.Order: ("expressions",),
    exp.Ordered: ("this", "desc", "nulls_first"),
    exp.Limit: ("expression",),
    **{
        cls: _BINARY
        for cls in (exp.EQ, exp.NEQ, exp.LT, exp.LTE, exp.GT, exp.GTE, exp.And, exp.Or)
        + (exp.Add, exp.Sub, exp.Mul, exp.Div)
    },
}

_VALUE_NODES = {exp.Column, exp.Identifier, exp.Literal, exp.Paren}
# the aggregates of the subset; what each accepts is checked when it is classified (analyze)
_AGGREGATE_NODES = {
    exp.Count, exp.Sum, exp.Avg, exp.Star, exp.Distinct,
    exp.VariancePop, exp.Variance, exp.Stddev, exp.StddevPop, exp.StddevSamp,
    exp.Median, exp.Min, exp.Max, exp.PercentileCont, exp.WithinGroup, exp.Order, exp.Ordered,
}
_WHERE_NODES = (
    _VALUE_NODES
    | {exp.Boolean, exp.Null, exp.Not, exp.And, exp.Or, exp.In, exp.Between}
    | {exp.Is, exp.EQ, exp.NEQ, exp.LT, exp.LTE, exp.GT, exp.GTE}
    | {exp.Neg, exp.Add, exp.Sub, exp.Mul, exp.Div}
)
# node types allowed only under a given parent type (ORDER BY inside WITHIN GROUP, ...)
_ONLY_UNDER: dict[type[exp.Expression], type[exp.Expression]] = {
    exp.Order: exp.WithinGroup,
    exp.Ordered: exp.Order,
    exp.Distinct: exp.Count,
}
# GROUP BY is checked first: a key without a public domain is the root problem of a query
_CLAUSE_NODES: dict[str, frozenset[type[exp.Expression]]] = {
    "group": frozenset(_VALUE_NODES | {exp.Group, exp.Floor, exp.Div, exp.Mul}),
    "expressions": frozenset(_VALUE_NODES | _AGGREGATE_NODES | {exp.Alias, exp.Floor} | {exp.Div, exp.Mul}),
    "where": frozenset(_WHERE_NODES | {exp.Where}),
    "having": frozenset(_WHERE_NODES | _AGGREGATE_NODES | {exp.Having}),
    "order": frozenset({exp.Order, exp.Ordered, exp.Column, exp.Identifier, exp.Literal}),
    "limit": frozenset({exp.Limit, exp.Literal}),
}

_ARG_NAMES = {
    "all": "GROUP BY ALL",
    "with_fill": "WITH FILL",
    "limit_options": "LIMIT ... PERCENT / WITH TIES",
    "symmetric": "BETWEEN SYMMETRIC",
    "query": "IN (SELECT ...)",
    "unnest": "IN UNNEST(...)",
    "expressions": "COUNT with several arguments",
    "offset": "LIMIT offset, n",
    "decimals": "FLOOR with decimals",
}


def _count_distinct(node: exp.Expression) -> bool:
    """COUNT(DISTINCT <one column>): the analyser then accepts it only for the privacy unit."""
    return (
        isinstance(node, exp.Distinct)
        and isinstance(node.parent, exp.Count)
        and node.arg_key == "this"
        and len(node.expressions) == 1
        and isinstance(node.expressions[0], exp.Column)
        and not any(v not in (None, False, [], "") for k, v in node.args.items() if k != "expressions")
    )


def check_structure(select: exp.Select) -> None:
    """Refuse constructs that reach rows, anywhere in the tree, with their specific code."""
    for node in select.walk():
        if node is select or _count_distinct(node):
            continue
        for classes, code, message in _STRUCTURAL:
            if isinstance(node, classes):
                raise BadRequest(message, code)


def check_clauses(select: exp.Select) -> None:
    """Only SELECT list, FROM, WHERE, GROUP BY, HAVING, ORDER BY and LIMIT may be present."""
    for key, value in select.args.items():
        if key in _ALLOWED_CLAUSES or not value:
            continue
        message = _CLAUSE_REFUSALS.get(
            key,
            f"the {key.strip('_').upper()} clause is not available; the accepted clauses are "
            "SELECT, FROM, WHERE, GROUP BY, HAVING, ORDER BY and LIMIT",
        )
        raise BadRequest(message, "unsupported_clause")


def check_nodes(select: exp.Select) -> None:
    """Every node of every clause but FROM must be of an allowed type with allowed arguments."""
    for clause, allowed in _CLAUSE_NODES.items():
        for root in _as_list(select.args.get(clause)):
            for node in root.walk():
                _check_node(node, clause, allowed)


def _as_list(value: object) -> list[exp.Expression]:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    assert isinstance(value, exp.Expression)
    return [value]


def _check_node(node: exp.Expression, clause: str, allowed: frozenset[type]) -> None:
    if isinstance(node, exp.Star) and (_unexpected_args(node) or not isinstance(node.parent, exp.Count)):
        raise BadRequest(
            "* selects raw rows, which are never returned; select aggregates instead, "
            "e.g. SELECT COUNT(*) ... or SELECT sex, COUNT(*) ... GROUP BY sex",
            "not_aggregate",
        )
    if type(node) not in allowed:
        refuse_node(node, clause)
    parent = _ONLY_UNDER.get(type(node)) if clause != "order" else None
    if parent is not None and not isinstance(node.parent, parent):
        refuse_node(node, clause)
    extra = _unexpected_args(node)
    if extra:
        name = _ARG_NAMES.get(extra, extra.strip("_").upper())
        code = "unbounded_group_keys" if clause == "group" else "unsupported_expression"
        if isinstance(node, (exp.Group, exp.Limit, exp.Ordered)):
            code = "unsupported_clause"
        raise BadRequest(f"{name} is not available in {CLAUSE_NAMES[clause]}; {CLAUSE_HINTS[clause]}", code)


def _unexpected_args(node: exp.Expression) -> str | None:
    allowed = _ALLOWED_ARGS.get(type(node), ())
    for key, value in node.args.items():
        if key not in allowed and value not in (None, False, [], ""):
            return key
    return None


def refuse_node(node: exp.Expression, clause: str) -> NoReturn:
    """Raise the refusal for a node that is not allowed in ``clause``."""
    where = CLAUSE_NAMES.get(clause, clause)
    hint = CLAUSE_HINTS.get(clause, SELECT_HINT)
    if clause == "group":
        raise BadRequest(
            f"{describe(node)} cannot be a GROUP BY key: its values are not a public, bounded domain. {hint}",
            "unbounded_group_keys",
        )
    if isinstance(node, exp.Fetch):
        raise BadRequest("FETCH FIRST is not available; write LIMIT n", "unsupported_clause")
    if clause in ("order", "limit"):
        raise BadRequest(f"{describe(node)} is not available in {where}; {hint}", "unsupported_expression")
    if isinstance(node, _WRAPPERS) and isinstance(node.this, exp.Func):
        node = node.this  # ANY_VALUE(x) arrives as IgnoreNulls(AnyValue(x))
    if isinstance(node, exp.Func):
        raise BadRequest(function_message(node, clause), "unsupported_function")
    if isinstance(node, _ARITHMETIC) and node.find(exp.AggFunc) is not None:
        raise BadRequest(ARITHMETIC_ON_AGGREGATES, "unsupported_expression")
    raise BadRequest(f"{describe(node)} is not available in {where}; {hint}", "unsupported_expression")
