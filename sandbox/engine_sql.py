"""The SQL the engine runs, built from the typed plan (never from operator SQL): exact bounded
aggregates per group, a quantile's per-candidate counts, and the operator's predicate rendered so
that it can never fail on some rows only.

Everything is built as sqlglot trees (``*_tree``), identifiers always quoted; the ``*_sql``
functions render them for DuckDB (another backend renders the same trees in its own dialect).
"""

from __future__ import annotations

from sqlglot import exp

from sandbox.bounding import UNIT_KEY, value_column
from sandbox.dp.planner import DPPlan, Primitive
from sandbox.dp.spread import centred_tree, square_tree
from sandbox.engine_joins import from_tree
from sandbox.policy.models import Dataset
from sandbox.sql.plan import GroupKey, QuantileGrid

DIALECT = "duckdb"


def column(name: str) -> exp.Column:
    """An unqualified, quoted column reference."""
    return exp.column(exp.to_identifier(name, quoted=True))


def number(value: float | int) -> exp.Expression:
    """A numeric literal written as before the trees: ``repr`` of a float (``0.3``, ``10.0``), digits
    of an int (a negative one is ``Neg`` of its absolute value, rendered ``-5``). DuckDB reads ``0.3``
    as DECIMAL and ``1e-05`` as DOUBLE, so the text matters."""
    return exp.Literal.number(repr(float(value)) if isinstance(value, float) else int(value))


def _named(expression: exp.Expression, alias: str) -> exp.Alias:
    return exp.Alias(this=expression, alias=exp.to_identifier(alias, quoted=True))


def key_tree(key: GroupKey) -> exp.Expression:
    """The engine expression of a group key: the column, or ``FLOOR(col / w) * w``. Keys outside the
    public domain (values outside the declared categories or bounds) are dropped after aggregation,
    in :meth:`Engine.exact`."""
    ref = column(key.column)
    if key.bin_width is None:
        return ref
    w = number(key.bin_width)
    return exp.Mul(this=exp.Floor(this=exp.Div(this=ref, expression=w)), expression=w.copy())


def where_tree(where: exp.Expression, ds: Dataset) -> exp.Expression:
    """The operator's predicate, rendered so that evaluating it can never fail on some rows only.

    Numeric columns and literals become DOUBLE (arithmetic overflows to inf instead of raising)
    and the whole predicate is wrapped in TRY(...): a row whose predicate errors is simply not
    selected. Otherwise an error raised only by the targeted rows would answer, without noise,
    whether they exist.
    """
    tree = where.copy()
    for col in list(tree.find_all(exp.Column)):
        ref = column(col.name)
        spec = ds.columns.get(col.name)
        col.replace(exp.cast(ref, "DOUBLE") if spec is not None and spec.numeric else ref)
    for lit in list(tree.find_all(exp.Literal)):
        if not lit.is_string:
            lit.replace(exp.cast(lit.copy(), "DOUBLE"))
    return exp.Coalesce(this=exp.Try(this=tree), expressions=[exp.false()])


def _keys(plan: DPPlan) -> tuple[list[exp.Expression], list[exp.Expression]]:
    """The group keys as ``<key> AS k<i>``, and the key expressions to GROUP BY. Grouping by the
    expressions, not the output names: a dataset may declare a column named ``k0``, which DuckDB
    would bind in preference to the output name."""
    keys = [key_tree(k) for k in plan.query.group_keys]
    select: list[exp.Expression] = [_named(key.copy(), f"k{i}") for i, key in enumerate(keys)]
    return select, keys


def _measure(prim: Primitive, ds: Dataset) -> exp.Expression:
    """The exact aggregate of one primitive (bounded: sums read the fixed-point columns)."""
    if prim.kind == "count":
        return exp.Count(this=exp.Star() if prim.column is None else column(prim.column))
    if prim.kind in ("units", "select"):
        # the units among the rows that pass WHERE (and the join), per group: keyed hashes, never ids
        if ds.privacy_unit == "row":
            return exp.Count(this=exp.Star())
        return exp.Count(this=exp.Distinct(expressions=[column(UNIT_KEY)]))
    assert prim.column is not None, prim
    value = column(value_column(prim.column))
    if prim.kind == "centred_sum":
        return exp.Sum(this=centred_tree(value, ds.columns[prim.column]))
    if prim.kind == "centred_sumsq":
        return exp.Sum(this=square_tree(value, ds.columns[prim.column]))
    return exp.Sum(this=value)


def aggregate_tree(plan: DPPlan, primitives: tuple[Primitive, ...] | None = None) -> exp.Select:
    """Per group: ``k<i>`` the keys, ``a<j>`` the exact bounded aggregate of the j-th primitive
    (all of the plan's when ``primitives`` is None)."""
    ds = plan.dataset
    keys, group = _keys(plan)
    prims = plan.primitives if primitives is None else primitives
    measures = [_named(_measure(prim, ds), f"a{j}") for j, prim in enumerate(prims)]
    select = exp.select(*keys, *measures).from_(from_tree(plan))
    if plan.query.where is not None:
        select = select.where(where_tree(plan.query.where, ds))
    return select.group_by(*group) if group else select


def aggregate_sql(plan: DPPlan, primitives: tuple[Primitive, ...] | None = None) -> str:
    return aggregate_tree(plan, primitives).sql(dialect=DIALECT)


def quantile_counts_tree(plan: DPPlan, prim: Primitive, grid: QuantileGrid) -> exp.Select:
    """Per key: (g, at, n) for the bounded fixed-point values v of the column, g = (v - low) // step
    the candidate cell and at = (v == c_g). NULLs are not counted. v - low is never negative (v is
    bounded), so the integer division's rounding (towards zero in DuckDB) is the floor."""
    assert prim.column is not None, prim
    keys, group = _keys(plan)
    value = column(value_column(prim.column))
    offset = exp.paren(exp.Sub(this=value, expression=number(grid.low)), copy=False)
    cell = exp.IntDiv(this=offset, expression=number(grid.step))
    at = exp.EQ(this=exp.Mod(this=offset.copy(), expression=number(grid.step)), expression=number(0))
    select = exp.select(*keys, _named(cell, "qg"), _named(at, "qat"), _named(exp.Count(this=exp.Star()), "qn"))
    select = select.from_(from_tree(plan)).where(exp.not_(exp.Is(this=value.copy(), expression=exp.null())))
    if plan.query.where is not None:
        select = select.where(where_tree(plan.query.where, plan.dataset))  # ANDed to the one above
    return select.group_by(*group, cell.copy(), at.copy())


def quantile_counts_sql(plan: DPPlan, prim: Primitive, grid: QuantileGrid) -> str:
    return quantile_counts_tree(plan, prim, grid).sql(dialect=DIALECT)
