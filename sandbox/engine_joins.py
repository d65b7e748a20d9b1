"""The FROM of the engine's SQL when a query joins: a public lookup on its unique key, or a
second dataset with the same privacy unit, bounded again after the join (see sandbox.sql._join).

Only engine-built tables are read; the unit is a keyed hash (``__unit``), never the id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sandbox.bounding import ROW_KEY, UNIT_FIRST, UNIT_KEY

if TYPE_CHECKING:  # pragma: no cover
    from sandbox.dp.planner import DPPlan

__all__ = ["ROW_KEY", "UNIT_FIRST", "UNIT_KEY", "from_sql"]


def from_sql(plan: DPPlan) -> str:
    """The dataset, or the dataset left/inner-joined to a public lookup on the lookup's unique key,
    with the lookup's columns (and fixed-point values) named ``<lookup>__<column>``."""
    from sandbox.engine import _q, value_column

    ds, join = plan.dataset, plan.query.join
    if join is None:
        return _q(ds.id)
    if join.unit:
        return _unit_join_sql(plan)
    prefix = f"{join.lookup}__"
    items = ["p.*"]
    for name, column in ds.columns.items():
        if name.startswith(prefix):
            original = name[len(prefix):]
            items.append(f"l.{_q(original)} AS {_q(name)}")
            if column.numeric:
                items.append(f"l.{_q(value_column(original))} AS {_q(value_column(name))}")
    kind = "LEFT JOIN" if join.left else "JOIN"
    on = f"CAST(p.{_q(join.column)} AS VARCHAR) = CAST(l.{_q(join.key)} AS VARCHAR)"
    return f"(SELECT {', '.join(items)} FROM {_q(ds.id)} AS p {kind} {_q(join.lookup)} AS l ON {on}) AS {_q(ds.id)}"


def _unit_join_sql(plan: DPPlan) -> str:
    """Two datasets joined on their privacy unit (keyed hashes), then bounded again: each unit keeps
    at most ``max_rows_per_unit`` joined rows (ordered by the XOR of both rows' keyed PRF values,
    ``__row``, so the choice depends on the unit's own rows only), and its first kept row is its
    representative."""
    from sandbox.engine import _q, value_column

    ds, join = plan.dataset, plan.query.join
    prefix = f"{join.lookup}__"
    own = {n: c for n, c in ds.columns.items() if not n.startswith(prefix) and c.type != "id"}
    items = [f"p.{_q(n)}" for n in own] + [f"p.{_q(value_column(n))}" for n, c in own.items() if c.numeric]
    for name, column in ds.columns.items():
        if name.startswith(prefix):
            original = name[len(prefix):]
            items.append(f"l.{_q(original)} AS {_q(name)}")
            if column.numeric:
                items.append(f"l.{_q(value_column(original))} AS {_q(value_column(name))}")
    unit = f"p.{_q(UNIT_KEY)}"
    p_row, l_row = f"p.{_q(ROW_KEY)}", f"COALESCE(l.{_q(ROW_KEY)}, 0)"  # LEFT JOIN: no lookup row
    order = f"xor({p_row}, {l_row}), {p_row}, {l_row}"
    rank = f"row_number() OVER (PARTITION BY {unit} ORDER BY {order})"
    kind = "LEFT JOIN" if join.left else "JOIN"
    inner = (f"SELECT {', '.join(items)}, {rank} AS __rank FROM {_q(ds.id)} AS p {kind} {_q(join.lookup)} AS l "
             f"ON {unit} = l.{_q(UNIT_KEY)}")
    return (f"(SELECT * EXCLUDE (__rank), __rank = 1 AS {_q(UNIT_FIRST)} FROM ({inner}) "
            f"WHERE __rank <= {ds.max_rows_per_unit}) AS {_q(ds.id)}")
