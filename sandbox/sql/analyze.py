"""Analyse an operator's SQL into a :class:`QueryPlan`, accepting only an allow-listed subset.

The subset: one plain SELECT over one granted dataset, with the aggregates of ``_aggs``
(COUNT, SUM, AVG, variance and standard deviation, quantiles, MIN/MAX, COUNT(DISTINCT unit));
an optional WHERE of comparisons over granted columns and literals; an optional GROUP BY of
keys with public domains (categories, small int ranges, bins); and HAVING, ORDER BY and
LIMIT, which only post-process the noisy output. Everything else is refused with
a :class:`~sandbox.errors.BadRequest` (400) or :class:`~sandbox.errors.Forbidden` (403)
carrying a stable ``code`` and a message that says what would work.

The checks run on sqlglot's syntax tree, never on the text, in this order: parse
(``_parse``), constructs that reach rows and clauses (``_allow``), node types per clause
(``_allow``), FROM and column names (``_scope``), WHERE shapes and types (``_where``), then
the shapes of SELECT items (``_aggs``), GROUP BY keys and their domains (``_keys``), HAVING
(``_having``), ORDER BY and LIMIT here. Finally the tree is rewritten to canonical names for ``normalized_sql``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

from sqlglot import exp

from sandbox.errors import BadRequest
from sandbox.policy.models import IDENT, Dataset
from sandbox.sql._aggs import classify
from sandbox.sql._allow import check_clauses, check_nodes, check_structure
from sandbox.sql._having import having_predicate
from sandbox.sql._hints import (
    AGGREGATES_HINT,
    ARITHMETIC_ON_AGGREGATES,
    GROUP_HINT,
    LIMIT_HINT,
    ORDER_HINT,
    SELECT_HINT,
    show,
)
from sandbox.sql._hints import describe as _describe
from sandbox.sql._join import canonical_join, rewrite_join
from sandbox.sql._keys import MAX_GROUPS, KeySpec, domain_size, domain_values, key_spec, unwrap, whole_number
from sandbox.sql._parse import DIALECT, parse_select
from sandbox.sql._scope import Scope, fold, resolve_columns, resolve_from
from sandbox.sql._where import check_where
from sandbox.sql.plan import MAX_QUANTILE_CELLS, ORDER_KINDS, Aggregate, GroupKey, OrderItem, QueryPlan, quantile_grid

__all__ = ["analyze"]

def analyze(sql: str, datasets: Mapping[str, Dataset], granted: Mapping[str, Collection[str]]) -> QueryPlan:
    """Check ``sql`` against the accepted subset and return its plan.

    ``datasets`` is the whole catalog; ``granted`` maps each dataset id the caller's grant
    covers to the column names it allows.
    """
    try:
        return _analyze(sql, datasets, granted)
    except RecursionError:
        raise BadRequest("the query is nested too deeply; write a flatter predicate", "parse_error") from None


def _analyze(sql: str, datasets: Mapping[str, Dataset], granted: Mapping[str, Collection[str]]) -> QueryPlan:
    select = parse_select(sql)
    join, datasets, granted = rewrite_join(select, datasets, granted)
    check_structure(select)
    check_clauses(select)
    check_nodes(select)
    scope = resolve_from(select, datasets, granted)
    aliases = _aliases(select)
    resolve_columns(select, scope, set(aliases) - {None})
    where = select.args.get("where")
    if where is not None:
        check_where(where, scope)
    items = [_classify(unwrap(_unalias(e)), scope) for e in select.expressions]
    if not any(isinstance(item, Aggregate) for item in items):
        raise BadRequest(
            f"the query has no aggregate; results are only ever aggregates: {AGGREGATES_HINT}, "
            "e.g. SELECT sex, COUNT(*) FROM nhanes_2017 GROUP BY sex",
            "not_aggregate",
        )
    names = _output_names(items, aliases)
    specs = _group_specs(select, items, aliases, scope)
    group_keys = _group_keys(specs, items, names, scope)
    aggregates = tuple(
        Aggregate(kind=item.kind, column=item.column, name=name, q=item.q)
        for item, name in zip(items, names, strict=True)
        if isinstance(item, Aggregate)
    )
    _check_quantile_cells(aggregates, group_keys, scope)
    having = having_predicate(select, aggregates, group_keys, scope)
    order_by = _order_by(select, names)
    limit = _limit(select)
    if join is not None:
        select.set("joins", [canonical_join(join, scope.dataset.id)])
    normalized = _canonicalize(select, scope)
    return QueryPlan(
        dataset=scope.dataset.id,
        columns=tuple(names),
        aggregates=aggregates,
        group_keys=group_keys,
        where=where.this.copy() if where is not None else None,
        order_by=order_by,
        limit=limit,
        normalized_sql=normalized,
        having=having,
        join=join,
    )


def _unalias(node: exp.Expression) -> exp.Expression:
    return node.this if isinstance(node, exp.Alias) else node


def _aliases(select: exp.Select) -> list[str | None]:
    """The folded AS name of each SELECT item (None without one); names must be identifiers."""
    names: list[str | None] = []
    for item in select.expressions:
        if not isinstance(item, exp.Alias):
            names.append(None)
            continue
        identifier = item.args.get("alias")
        name = fold(identifier) if isinstance(identifier, exp.Identifier) else ""
        if not IDENT.match(name):
            raise BadRequest(
                f"output name {show(name)} is not accepted; names are lower-case letters, "
                "digits and _ starting with a letter, e.g. AS mean_age",
                "unsupported_expression",
            )
        names.append(name)
    return names


def _classify(node: exp.Expression, scope: Scope) -> Aggregate | KeySpec:
    """A SELECT item without alias and parentheses: an aggregate (default name) or a key."""
    aggregate = classify(node, scope)
    if aggregate is not None:
        return aggregate
    if node.find(exp.AggFunc) is not None:
        raise BadRequest(ARITHMETIC_ON_AGGREGATES, "unsupported_expression")
    if node.find(exp.Column) is None:
        raise BadRequest(
            f"{_describe(node)} is not an aggregate: constant columns are not returned. {SELECT_HINT}",
            "not_aggregate",
        )
    spec = key_spec(node)
    if spec is None:
        raise BadRequest(
            f"{_describe(node)} is neither an aggregate nor a GROUP BY key. {SELECT_HINT}",
            "unsupported_expression",
        )
    return spec


def _output_names(items: list[Aggregate | KeySpec], aliases: list[str | None]) -> list[str]:
    names = [alias or _default_name(item) for item, alias in zip(items, aliases, strict=True)]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise BadRequest(
                f"the output column name {name} appears twice; give one of them another name with AS, e.g. AS {name}_2",
                "duplicate_column_name",
            )
    return names


def _default_name(item: Aggregate | KeySpec) -> str:
    return item.default_name if isinstance(item, KeySpec) else item.name


def _group_specs(
    select: exp.Select, items: list[Aggregate | KeySpec], aliases: list[str | None], scope: Scope
) -> list[KeySpec]:
    group = select.args.get("group")
    specs: list[KeySpec] = []
    for node in group.expressions if group is not None else []:
        spec = _group_item(unwrap(node), items, aliases, scope)
        if spec in specs:
            raise BadRequest(
                f"{spec.label} appears twice in GROUP BY; list each key once",
                "duplicate_column_name",
            )
        specs.append(spec)
    return specs


def _group_item(
    node: exp.Expression,
    items: list[Aggregate | KeySpec],
    aliases: list[str | None],
    scope: Scope,
) -> KeySpec:
    target: int | None = None
    if isinstance(node, exp.Literal):
        position = whole_number(node)
        if position is None or not 1 <= position <= len(items):
            raise BadRequest(
                f"GROUP BY {show(str(node.this))} is not a key; a position must be a whole number "
                f"from 1 to {len(items)}. {GROUP_HINT}",
                "unbounded_group_keys",
            )
        target = position - 1
    elif isinstance(node, exp.Column) and node.name not in scope.dataset.columns:
        target = aliases.index(node.name)  # resolve_columns let only SELECT aliases through
    if target is not None:
        item = items[target]
        if isinstance(item, Aggregate):
            raise BadRequest(
                f"GROUP BY refers to SELECT item {target + 1}, an aggregate; group by a key. {GROUP_HINT}",
                "unbounded_group_keys",
            )
        return item
    spec = key_spec(node)
    if spec is None:
        raise BadRequest(f"{_describe(node)} cannot be a GROUP BY key. {GROUP_HINT}", "unbounded_group_keys")
    return spec


def _group_keys(
    specs: list[KeySpec], items: list[Aggregate | KeySpec], names: list[str], scope: Scope
) -> tuple[GroupKey, ...]:
    """Match GROUP BY keys with SELECT items and attach each key's public domain."""
    columns = scope.dataset.columns
    sizes = [domain_size(spec, columns[spec.column]) for spec in specs]
    if math.prod(sizes) > MAX_GROUPS:
        detail = " x ".join(f"{s.label} ({n})" for s, n in zip(specs, sizes, strict=True))
        raise BadRequest(
            f"{detail} = {math.prod(sizes)} groups; at most {MAX_GROUPS} are accepted. Use fewer keys or wider bins",
            "too_many_groups",
        )
    for item in items:
        if isinstance(item, KeySpec) and item not in specs:
            raise BadRequest(
                f"{item.label} is neither aggregated nor in GROUP BY; add GROUP BY "
                f"{item.label}, or aggregate it with COUNT/SUM/AVG",
                "not_aggregate",
            )
    keys = []
    for spec in specs:
        selected = [name for item, name in zip(items, names, strict=True) if item == spec]
        if not selected:
            raise BadRequest(
                f"GROUP BY {spec.label} is not selected; add it to the SELECT list so that each output row is labelled",
                "group_key_not_selected",
            )
        if len(selected) > 1:
            raise BadRequest(
                f"{spec.label} is selected twice ({', '.join(selected)}); select each key once",
                "duplicate_column_name",
            )
        if columns[spec.column].open_keys and spec.width is None:
            keys.append(GroupKey(spec.column, selected[0], None, (), open=True))
            continue
        values = domain_values(spec, columns[spec.column])
        keys.append(GroupKey(spec.column, selected[0], spec.bin_width, values))
    if sum(key.open for key in keys) > 1:
        raise BadRequest(
            "at most one GROUP BY key may be without declared values (a text or unbounded int column); "
            "group by one of them, or by declared categories",
            "unbounded_group_keys",
        )
    return tuple(keys)


def _order_by(select: exp.Select, names: list[str]) -> tuple[OrderItem, ...]:
    order = select.args.get("order")
    result = []
    for ordered in order.expressions if order is not None else []:
        name = _order_target(ordered.this, names)
        result.append(OrderItem(name=name, descending=bool(ordered.args.get("desc"))))
    return tuple(result)


def _order_target(node: exp.Expression, names: list[str]) -> str:
    outputs = f"{ORDER_HINT}. Output columns: {', '.join(names)}"
    position = whole_number(node)
    if position is not None and 1 <= position <= len(names):
        return names[position - 1]
    if isinstance(node, exp.Column) and node.args.get("table") is None:
        name = fold(node.this)
        if name in names:
            return name
        raise BadRequest(
            f"{show(name)} is not an output column; {outputs}",
            "unknown_column",
        )
    raise BadRequest(
        f"ORDER BY {_describe(node)} is not accepted; {outputs}",
        "unsupported_expression",
    )


def _limit(select: exp.Select) -> int | None:
    limit = select.args.get("limit")
    if limit is None:
        return None
    value = whole_number(limit.expression)
    if value is not None:
        return value
    raise BadRequest(f"LIMIT {_describe(limit.expression)} is not accepted; {LIMIT_HINT}", "unsupported_expression")


def _canonicalize(select: exp.Select, scope: Scope) -> str:
    """Rewrite the accepted tree to canonical names and render it (cache key, audit record)."""
    select.set("from_", exp.From(this=exp.table_(scope.dataset.id)))
    for item in select.expressions:
        if isinstance(item, exp.Alias):
            item.set("alias", exp.to_identifier(fold(item.args["alias"])))
    order = select.args.get("order")
    for ordered in order.expressions if order is not None else []:
        if isinstance(ordered.this, exp.Column):
            ordered.set("this", exp.column(fold(ordered.this.this)))
    for node in select.walk():
        node.comments = None
    return select.sql(dialect=DIALECT, comments=False)


def _check_quantile_cells(aggregates: tuple[Aggregate, ...], keys: tuple[GroupKey, ...], scope: Scope) -> None:
    groups = math.prod(len(k.values) for k in keys)
    for agg in aggregates:
        if agg.kind in ORDER_KINDS and any(k.open for k in keys):
            raise BadRequest(
                f"{agg.name}: quantiles group only by keys with declared values (categories, int "
                "ranges, bins), not by a text column",
                "unbounded_group_keys",
            )
        if agg.kind in ORDER_KINDS and agg.column is not None:
            m = quantile_grid(scope.dataset.columns[agg.column]).m
            if groups * m > MAX_QUANTILE_CELLS:
                raise BadRequest(
                    f"{agg.name} over {groups} groups scores {groups * m} candidates; at most "
                    f"{MAX_QUANTILE_CELLS} are accepted. Use fewer keys or wider bins",
                    "too_many_groups",
                )
