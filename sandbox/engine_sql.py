"""The SQL the engine runs, built from the typed plan (never from operator SQL): exact bounded
aggregates per group, a quantile's per-candidate counts, and the operator's predicate rendered so
that it can never fail on some rows only."""

from __future__ import annotations

from sqlglot import exp

from sandbox.bounding import UNIT_KEY, value_column
from sandbox.bounding import literal as _lit
from sandbox.bounding import quote as _q
from sandbox.dp.planner import DPPlan, Primitive
from sandbox.dp.spread import centred_sql, square_sql
from sandbox.engine_joins import from_sql as _from_sql
from sandbox.policy.models import Dataset
from sandbox.sql.plan import QuantileGrid


def _key_sql(key) -> str:  # noqa: ANN001
    """The engine expression of a group key. Keys outside the public domain (values outside
    the declared categories or bounds) are dropped after aggregation, in :meth:`Engine.exact`."""
    ref = _q(key.column)
    if key.bin_width is None:
        return ref
    w = _lit(key.bin_width)
    return f"FLOOR({ref} / {w}) * {w}"


def quantile_counts_sql(plan: DPPlan, prim: Primitive, grid: QuantileGrid) -> str:
    """Per key: (g, at, n) for the bounded fixed-point values v of the column, g = (v - low) // step
    the candidate cell and at = (v == c_g). NULLs are not counted."""
    ds = plan.dataset
    keys = [f"{_key_sql(key)} AS k{i}" for i, key in enumerate(plan.query.group_keys)]
    value = _q(value_column(prim.column))
    offset = f"({value} - {grid.low})"
    select = [*keys, f"{offset} // {grid.step} AS qg", f"{offset} % {grid.step} = 0 AS qat", "COUNT(*) AS qn"]
    where = [f"{value} IS NOT NULL"]
    if plan.query.where is not None:
        where.append(_where_sql(plan.query.where, ds))
    group = [f"k{i}" for i in range(len(keys))] + ["qg", "qat"]
    return f"SELECT {', '.join(select)} FROM {_from_sql(plan)} WHERE {' AND '.join(where)} GROUP BY {', '.join(group)}"


def aggregate_sql(plan: DPPlan, primitives: tuple[Primitive, ...] | None = None) -> str:
    ds = plan.dataset
    select, where, group = [], [], []
    for i, key in enumerate(plan.query.group_keys):
        select.append(f"{_key_sql(key)} AS k{i}")
        group.append(f"k{i}")
    for j, prim in enumerate(plan.primitives if primitives is None else primitives):
        if prim.kind == "count":
            arg = "*" if prim.column is None else _q(prim.column)
            select.append(f"COUNT({arg}) AS a{j}")
        elif prim.kind in ("units", "select"):
            # the units among the rows that pass WHERE (and the join), per group: keyed hashes, never ids
            units = "*" if ds.privacy_unit == "row" else f"DISTINCT {_q(UNIT_KEY)}"
            select.append(f"COUNT({units}) AS a{j}")
        elif prim.kind in ("centred_sum", "centred_sumsq"):
            value, column = _q(value_column(prim.column)), ds.columns[prim.column]
            term = centred_sql(value, column) if prim.kind == "centred_sum" else square_sql(value, column)
            select.append(f"SUM({term}) AS a{j}")
        else:
            select.append(f"SUM({_q(value_column(prim.column))}) AS a{j}")
    if plan.query.where is not None:
        where.append(_where_sql(plan.query.where, ds))
    sql = f"SELECT {', '.join(select)} FROM {_from_sql(plan)}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if group:
        sql += " GROUP BY " + ", ".join(group)
    return sql


def _where_sql(where: exp.Expression, ds: Dataset) -> str:
    """Render the operator's predicate so that evaluating it can never fail on some rows only.

    Numeric columns and literals become DOUBLE (arithmetic overflows to inf instead of raising)
    and the whole predicate is wrapped in TRY(...): a row whose predicate errors is simply not
    selected. Otherwise an error raised only by the targeted rows would answer, without noise,
    whether they exist.
    """
    tree = where.copy()
    for col in list(tree.find_all(exp.Column)):
        ref = exp.column(exp.to_identifier(col.name, quoted=True))
        spec = ds.columns.get(col.name)
        col.replace(exp.cast(ref, "DOUBLE") if spec is not None and spec.numeric else ref)
    for lit in list(tree.find_all(exp.Literal)):
        if not lit.is_string:
            lit.replace(exp.cast(lit.copy(), "DOUBLE"))
    return f"COALESCE(TRY({tree.sql(dialect='duckdb')}), FALSE)"
