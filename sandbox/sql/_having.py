"""HAVING: a filter on the noisy output rows, free post-processing.

HAVING may name output columns (aliases, default names such as ``count``, GROUP BY keys) and
aggregates that are also in the SELECT list (``HAVING COUNT(*) > 100`` next to ``COUNT(*) AS
n``); each aggregate is rewritten to its output column, so the predicate reads only released
values. An aggregate that is not selected is refused: measuring it would cost budget, and
filtering on an unreleased value would not be post-processing. The gateway evaluates the
predicate on the noisy rows after release (``sandbox.sql.post``), never on exact aggregates.
"""

from __future__ import annotations

from types import SimpleNamespace

from sqlglot import exp

from sandbox.errors import BadRequest
from sandbox.sql import _where
from sandbox.sql._aggs import classify, is_aggregate
from sandbox.sql._hints import HAVING_HINT, describe, show
from sandbox.sql._scope import Scope, fold, resolve_column, resolve_unit
from sandbox.sql.plan import Aggregate, GroupKey


def having_predicate(
    select: exp.Select, aggregates: tuple[Aggregate, ...], keys: tuple[GroupKey, ...], scope: Scope
) -> exp.Expression | None:
    """The HAVING predicate over output column names (None without HAVING); the select's HAVING
    clause is replaced by it, so that the normalized text names output columns too."""
    having = select.args.get("having")
    if having is None:
        return None
    tree = having.this.copy()
    names = [a.name for a in aggregates] + [k.name for k in keys]
    outer = [node for node in tree.walk() if is_aggregate(node) and not _inside_aggregate(node)]
    for column in list(tree.find_all(exp.Column)):
        if not _inside_aggregate(column):
            column.replace(exp.column(_output_name(column, names)))
    for node in outer:
        replacement = exp.column(_selected(node, aggregates, scope))
        if node is tree:
            tree = replacement
        else:
            node.replace(replacement)
    _check(tree, aggregates, keys, scope)
    select.set("having", exp.Having(this=tree.copy()))
    return tree


def _inside_aggregate(node: exp.Expression) -> bool:
    parent = node.parent
    while parent is not None:
        if is_aggregate(parent):
            return True
        parent = parent.parent
    return False


def _output_name(column: exp.Column, names: list[str]) -> str:
    if not isinstance(column.this, exp.Identifier) or column.args.get("table") is not None:
        raise BadRequest(
            f"HAVING names output columns without a table: {show(column.sql(dialect='duckdb'))}; {HAVING_HINT}",
            "unknown_column",
        )
    name = fold(column.this)
    if name not in names:
        raise BadRequest(
            f"{show(name)} is not an output column; HAVING filters the released rows. "
            f"Output columns: {', '.join(names)}",
            "unknown_column",
        )
    return name


def _selected(node: exp.Expression, aggregates: tuple[Aggregate, ...], scope: Scope) -> str:
    for column in list(node.find_all(exp.Column)):
        unit = resolve_unit(column, scope)
        column.replace(exp.column(unit if unit is not None else resolve_column(column, scope)))
    wanted = classify(node, scope)
    assert wanted is not None
    for agg in aggregates:
        if (agg.kind, agg.column, agg.q) == (wanted.kind, wanted.column, wanted.q):
            return agg.name
    raise BadRequest(
        f"HAVING uses {describe(node)}, which is not in the SELECT list; add it there (e.g. "
        f"{describe(node)} AS x) and filter on that: HAVING only reads released values",
        "having_not_selected",
    )


def _check(tree: exp.Expression, aggregates: tuple[Aggregate, ...], keys: tuple[GroupKey, ...], scope: Scope) -> None:
    """Shapes and types as in WHERE, over the output columns (aggregates are numbers)."""
    columns = {a.name: SimpleNamespace(numeric=True) for a in aggregates}
    for key in keys:
        spec = scope.dataset.columns[key.column]
        columns[key.name] = SimpleNamespace(numeric=key.bin_width is not None or spec.numeric)
    outputs = SimpleNamespace(dataset=SimpleNamespace(columns=columns))
    for node in tree.walk():
        _where._check_shape(node)
    kind = _where._kind(tree, outputs)  # type: ignore[arg-type]
    if kind not in ("boolean", "null"):
        raise BadRequest(f"HAVING needs a condition, not a {kind}; {HAVING_HINT}", "type_mismatch")
