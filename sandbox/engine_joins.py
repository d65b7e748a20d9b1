"""The FROM of the engine's SQL when a query joins: a public lookup on its unique key, or a
second dataset with the same privacy unit, bounded again after the join (see sandbox.sql._join).

Only engine-built tables are read; the unit is a keyed hash (``__unit``), never the id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlglot import exp

from sandbox.bounding import ROW_KEY, UNIT_FIRST, UNIT_KEY, value_column
from sandbox.policy.models import Column, Dataset

if TYPE_CHECKING:  # pragma: no cover
    from sandbox.dp.planner import DPPlan

__all__ = ["ROW_KEY", "UNIT_FIRST", "UNIT_KEY", "from_sql", "from_tree"]

RANK = "__rank"  # a unit's joined rows in bounding order (dropped from the joined table)


def _ident(name: str) -> exp.Identifier:
    return exp.to_identifier(name, quoted=True)


def _col(name: str, table: str | None = None) -> exp.Column:
    """A quoted column reference, qualified by ``table`` (``p``: the private side, ``l``: the other)."""
    return exp.column(_ident(name), table=_ident(table) if table else None)


def _table(name: str, alias: str | None = None) -> exp.Table:
    table = exp.Table(this=_ident(name))
    if alias is not None:
        table.set("alias", exp.TableAlias(this=_ident(alias)))
    return table


def _as(expression: exp.Expression, alias: str) -> exp.Alias:
    return exp.Alias(this=expression, alias=_ident(alias))


def _varchar(expression: exp.Expression) -> exp.Cast:
    return exp.cast(expression, "VARCHAR")


def from_tree(plan: DPPlan) -> exp.Table | exp.Subquery:
    """The dataset, or the dataset left/inner-joined to a public lookup on the lookup's unique key,
    with the lookup's columns (and fixed-point values) named ``<lookup>__<column>``.

    The private side's columns are listed one by one (never ``p.*``), and the lookup side keeps only
    the rows whose key is unique in the file the join runs on: even if the lookup was refreshed with a
    repeated key after the check before charging, no private row can meet two lookup rows."""

    ds, join = plan.dataset, plan.query.join
    if join is None:
        return _table(ds.id)
    if join.unit:
        return _unit_join_tree(plan)
    items = _private_items(plan) + _internal_items(ds) + _joined_items(plan)
    once = exp.EQ(this=exp.Window(this=exp.Count(this=exp.Star()), partition_by=[_varchar(_col(join.key))]),
                  expression=exp.Literal.number(1))
    lookup = exp.select(exp.Star()).from_(_table(join.lookup)).qualify(once).subquery(_ident("l"))
    on = exp.EQ(this=_varchar(_col(join.column, "p")), expression=_varchar(_col(join.key, "l")))
    joined = exp.Join(this=lookup, on=on, side="LEFT" if join.left else None)
    inner = exp.select(*items).from_(_table(ds.id, "p"))
    inner.append("joins", joined)
    return inner.subquery(_ident(ds.id))


def from_sql(plan: DPPlan) -> str:
    """:func:`from_tree` in DuckDB's SQL."""
    return from_tree(plan).sql(dialect="duckdb")


def _has_values(column: Column) -> bool:
    """Whether the engine table carries a fixed-point column for it (bounded numeric columns only)."""
    return column.numeric and column.bounds is not None


def _private_items(plan: DPPlan) -> list[exp.Expression]:
    """The private dataset's own declared columns (and fixed-point values), by name."""

    ds, join = plan.dataset, plan.query.join
    assert join is not None
    prefix = join.lookup + "__"
    own = {n: c for n, c in ds.columns.items() if not n.startswith(prefix) and c.type != "id"}
    values = [value_column(n) for n, c in own.items() if _has_values(c)]
    return [_col(n, "p") for n in [*own, *values]]


def _internal_items(ds: Dataset) -> list[exp.Expression]:

    names = [UNIT_FIRST] if ds.privacy_unit == "row" else [UNIT_FIRST, UNIT_KEY, ROW_KEY]
    return [_col(n, "p") for n in names]


def _joined_items(plan: DPPlan) -> list[exp.Expression]:
    """The other dataset's columns, renamed ``<other>__<column>``."""

    ds, join = plan.dataset, plan.query.join
    assert join is not None
    prefix = join.lookup + "__"
    items: list[exp.Expression] = []
    for name, column in ds.columns.items():
        if name.startswith(prefix):
            original = name[len(prefix):]
            items.append(_as(_col(original, "l"), name))
            if _has_values(column):
                items.append(_as(_col(value_column(original), "l"), value_column(name)))
    return items


def _unit_join_tree(plan: DPPlan) -> exp.Subquery:
    """Two datasets joined on their privacy unit (keyed hashes), then bounded again: each unit keeps
    at most ``max_rows_per_unit`` joined rows (ordered by the XOR of both rows' keyed PRF values,
    ``__row``, so the choice depends on the unit's own rows only), and its first kept row is its
    representative."""

    ds, join = plan.dataset, plan.query.join
    assert join is not None
    p_row = _col(ROW_KEY, "p")
    l_row = exp.Coalesce(this=_col(ROW_KEY, "l"), expressions=[exp.Literal.number(0)])  # LEFT JOIN: no lookup row
    order = [exp.BitwiseXor(this=p_row, expression=l_row), p_row.copy(), l_row.copy()]
    rank = exp.Window(this=exp.RowNumber(), partition_by=[_col(UNIT_KEY, "p")],
                      order=exp.Order(expressions=[exp.Ordered(this=o, nulls_first=False) for o in order]))
    items = [*_private_items(plan), _col(UNIT_KEY, "p"), *_joined_items(plan), _as(rank, RANK)]
    on = exp.EQ(this=_col(UNIT_KEY, "p"), expression=_col(UNIT_KEY, "l"))
    inner = exp.select(*items).from_(_table(ds.id, "p"))
    inner.append("joins", exp.Join(this=_table(join.lookup, "l"), on=on, side="LEFT" if join.left else None))
    first = _as(exp.EQ(this=_col(RANK), expression=exp.Literal.number(1)), UNIT_FIRST)
    kept = exp.LTE(this=_col(RANK), expression=exp.Literal.number(ds.max_rows_per_unit))
    bounded = exp.select(exp.Star(except_=[_col(RANK)]), first).from_(inner.subquery()).where(kept)
    return bounded.subquery(_ident(ds.id))
