"""The FROM of the engine's SQL when a query joins: a public lookup on its unique key, or a
second dataset with the same privacy unit, bounded again after the join (see sandbox.sql._join).

Only engine-built tables are read; the unit is a keyed hash (``__unit``), never the id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sandbox.bounding import ROW_KEY, UNIT_FIRST, UNIT_KEY, value_column
from sandbox.bounding import quote as _q
from sandbox.policy.models import Column, Dataset

if TYPE_CHECKING:  # pragma: no cover
    from sandbox.dp.planner import DPPlan

__all__ = ["ROW_KEY", "UNIT_FIRST", "UNIT_KEY", "from_sql"]


def from_sql(plan: DPPlan) -> str:
    """The dataset, or the dataset left/inner-joined to a public lookup on the lookup's unique key,
    with the lookup's columns (and fixed-point values) named ``<lookup>__<column>``.

    The private side's columns are listed one by one (never ``p.*``), and the lookup side keeps only
    the rows whose key is unique in the file the join runs on: even if the lookup was refreshed with a
    repeated key after the check before charging, no private row can meet two lookup rows."""

    ds, join = plan.dataset, plan.query.join
    if join is None:
        return _q(ds.id)
    if join.unit:
        return _unit_join_sql(plan)
    items = _private_items(plan) + _internal_items(ds) + _joined_items(plan)
    kind = "LEFT JOIN" if join.left else "JOIN"
    key = f"CAST({_q(join.key)} AS VARCHAR)"
    lookup = f"(SELECT * FROM {_q(join.lookup)} QUALIFY count(*) OVER (PARTITION BY {key}) = 1)"
    on = f"CAST(p.{_q(join.column)} AS VARCHAR) = CAST(l.{_q(join.key)} AS VARCHAR)"
    return f"(SELECT {', '.join(items)} FROM {_q(ds.id)} AS p {kind} {lookup} AS l ON {on}) AS {_q(ds.id)}"


def _has_values(column: Column) -> bool:
    """Whether the engine table carries a fixed-point column for it (bounded numeric columns only)."""
    return column.numeric and column.bounds is not None


def _private_items(plan: DPPlan) -> list[str]:
    """The private dataset's own declared columns (and fixed-point values), by name."""

    ds, join = plan.dataset, plan.query.join
    assert join is not None
    prefix = f"{join.lookup}__"
    own = {n: c for n, c in ds.columns.items() if not n.startswith(prefix) and c.type != "id"}
    return [f"p.{_q(n)}" for n in own] + [f"p.{_q(value_column(n))}" for n, c in own.items() if _has_values(c)]


def _internal_items(ds: Dataset) -> list[str]:

    names = [UNIT_FIRST] if ds.privacy_unit == "row" else [UNIT_FIRST, UNIT_KEY, ROW_KEY]
    return [f"p.{_q(n)}" for n in names]


def _joined_items(plan: DPPlan) -> list[str]:
    """The other dataset's columns, renamed ``<other>__<column>``."""

    ds, join = plan.dataset, plan.query.join
    assert join is not None
    prefix = f"{join.lookup}__"
    items = []
    for name, column in ds.columns.items():
        if name.startswith(prefix):
            original = name[len(prefix):]
            items.append(f"l.{_q(original)} AS {_q(name)}")
            if _has_values(column):
                items.append(f"l.{_q(value_column(original))} AS {_q(value_column(name))}")
    return items


def _unit_join_sql(plan: DPPlan) -> str:
    """Two datasets joined on their privacy unit (keyed hashes), then bounded again: each unit keeps
    at most ``max_rows_per_unit`` joined rows (ordered by the XOR of both rows' keyed PRF values,
    ``__row``, so the choice depends on the unit's own rows only), and its first kept row is its
    representative."""

    ds, join = plan.dataset, plan.query.join
    items = _private_items(plan) + [f"p.{_q(UNIT_KEY)}"] + _joined_items(plan)
    unit = f"p.{_q(UNIT_KEY)}"
    p_row, l_row = f"p.{_q(ROW_KEY)}", f"COALESCE(l.{_q(ROW_KEY)}, 0)"  # LEFT JOIN: no lookup row
    order = f"xor({p_row}, {l_row}), {p_row}, {l_row}"
    rank = f"row_number() OVER (PARTITION BY {unit} ORDER BY {order})"
    kind = "LEFT JOIN" if join.left else "JOIN"
    inner = (f"SELECT {', '.join(items)}, {rank} AS __rank FROM {_q(ds.id)} AS p {kind} {_q(join.lookup)} AS l "
             f"ON {unit} = l.{_q(UNIT_KEY)}")
    return (f"(SELECT * EXCLUDE (__rank), __rank = 1 AS {_q(UNIT_FIRST)} FROM ({inner}) "
            f"WHERE __rank <= {ds.max_rows_per_unit}) AS {_q(ds.id)}")
