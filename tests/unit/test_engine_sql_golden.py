"""Golden SQL for the engine's own queries (``sandbox.engine_sql``), checked twice.

Each case is an operator query over a small test catalog: the exact DuckDB text the engine
builds for it is pinned here, and that text is run on engine-shaped tables in a real DuckDB,
its rows compared with what a plain-Python reading of the same rows gives (the group keys, the
fixed-point sums, the centred sums and squares of ``dp.spread``, a quantile's candidate cells,
the predicate under SQL's NULL logic, the bound re-applied after a unit join). A golden text
therefore cannot pin a wrong query.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb
import pytest
from sqlglot import exp

from sandbox.dp import spread
from sandbox.dp.planner import DPPlan, Primitive, plan_dp
from sandbox.engine_sql import aggregate_sql, aggregate_tree, quantile_counts_sql, quantile_counts_tree
from sandbox.policy.models import Dataset
from sandbox.sql._join import joined_dataset
from sandbox.sql.analyze import analyze
from sandbox.sql.plan import GroupKey, quantile_grid

Row = dict[str, Any]

TRIPS = Dataset.model_validate({
    "id": "trips", "title": "trips", "source": "trips.parquet", "classification": "L2",
    "privacy_unit": "pid", "max_rows_per_unit": 3,
    "columns": {
        "pid": {"type": "id"},
        "zone": {"type": "category", "values": ["a", "b", "c"]},
        "km": {"type": "float", "bounds": [0, 50], "scale": 1},
        "temp": {"type": "int", "bounds": [-30, 10]},  # a negative centre (-10) and grid low (-30)
        "fare": {"type": "float", "bounds": [0, 200_000], "scale": 2},  # squares carried in 2^7 units
    },
})
EXTRA = Dataset.model_validate({
    "id": "extra", "title": "extra", "source": "extra.parquet", "classification": "L2",
    "privacy_unit": "pid", "max_rows_per_unit": 2,
    "columns": {"pid": {"type": "id"}, "zone": {"type": "category", "values": ["a", "b", "c"]},
                "spend": {"type": "int", "bounds": [0, 100]}},
})
REGIONS = Dataset.model_validate({
    "id": "regions", "title": "regions", "source": "regions.parquet", "classification": "L1",
    "privacy_unit": "row", "max_rows_per_unit": 1, "public": True, "key": "code",
    "columns": {"code": {"type": "category", "values": ["a", "b", "c"]},
                "name": {"type": "category", "values": ["Alpha", "Beta", "Gamma"]},
                "pop": {"type": "int", "bounds": [0, 1000]}},
})
CATALOG = {ds.id: ds for ds in (TRIPS, EXTRA, REGIONS)}
GRANTED = {"trips": {"zone", "km", "temp", "fare"}, "extra": {"zone", "spend"}, "regions": {"code", "name", "pop"}}

# engine tables after the build's bound: (unit, __row, columns...); __unit is a stand-in keyed hash
TRIPS_ROWS = [
    ("p1", 11, "a", 12.3, -5, 1234.56), ("p1", 5, "b", 3.0, 7, 99999.99), ("p1", 9, "a", None, -25, 150000.0),
    ("p2", 0, "b", 27.8, 0, 10.5),
    ("p3", 4, "c", 45.1, -12, None), ("p3", 2, "a", 8.4, 9, 777.77),
    ("p4", 3, "a", 0.0, -30, 200000.0), ("p4", 8, "c", 19.9, None, 42.42), ("p4", 6, "b", 33.3, 3, 5000.01),
    ("p5", 0, "c", 5.5, -18, 60000.0),
]
EXTRA_ROWS = [("p1", 6, "a", 10), ("p1", 12, "b", 20), ("p2", 0, "c", 30), ("p3", 1, "a", 40), ("p3", 7, "b", None),
              ("p4", 2, "c", 50), ("p4", 5, "a", 60), ("p6", 0, "b", 70)]
REGIONS_ROWS = [("a", "Alpha", 100), ("b", "Beta", 200), ("b", "Beta2", 300)]  # b repeats: the join drops it
UNITS = {f"p{i}": 1000 + 7 * i for i in range(1, 7)}


def _engine_rows(ds: Dataset, rows: list[tuple]) -> list[Row]:
    """Rows as the engine table holds them: declared columns, fixed-point values, internal columns."""
    names = [n for n, c in ds.columns.items() if c.type != "id"]
    unit = ds.privacy_unit != "row"
    out = []
    for raw in rows:
        rank, values = (raw[:2], raw[2:]) if unit else ((None, 0), raw)
        row: Row = dict(zip(names, values, strict=True))
        for name in names:
            column = ds.columns[name]
            if column.numeric and column.bounds is not None:
                v = row[name]
                row[f"__v_{name}"] = None if v is None else round(v * column.factor)
        row["__row"] = rank[1]
        if unit:
            row["__unit"] = UNITS[rank[0]]
        out.append(row)
    for row in out:  # the representative: the unit's row of smallest __row
        row["__unit_first"] = not unit or row["__row"] == min(r["__row"] for r in out if r["__unit"] == row["__unit"])
    return out


TABLES = {"trips": _engine_rows(TRIPS, TRIPS_ROWS), "extra": _engine_rows(EXTRA, EXTRA_ROWS),
          "regions": _engine_rows(REGIONS, REGIONS_ROWS)}


def _duck_type(value: object) -> str:
    return {bool: "BOOLEAN", int: "BIGINT", float: "DOUBLE", str: "VARCHAR"}[type(value)]


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    db = duckdb.connect()
    for name, rows in TABLES.items():
        types = {}
        for row in rows:
            types.update({k: _duck_type(v) for k, v in row.items() if v is not None})
        types.update({"__unit": "UBIGINT", "__row": "UBIGINT"})  # as the build writes them
        cols = [c for c in rows[0] if c in types]
        db.execute(f"CREATE TABLE {name} ({', '.join(f'{c} {types[c]}' for c in cols)})")
        db.executemany(f"INSERT INTO {name} VALUES ({', '.join('?' for _ in cols)})",
                       [[r[c] for c in cols] for r in rows])
    return db


# --- the plain-Python reading -------------------------------------------------------------------------------------


def _unit_join(left: bool) -> list[Row]:
    """trips joined to extra on the unit, each unit's pairs ordered by (xor of both __row, trips' __row,
    extra's __row) and the first 3 kept (the larger bound)."""
    out = []
    for u in sorted(UNITS.values()):
        mine = [r for r in TABLES["trips"] if r["__unit"] == u]
        theirs = [r for r in TABLES["extra"] if r["__unit"] == u]
        pairs = [(p, o) for p in mine for o in theirs] or ([(p, None) for p in mine] if left else [])
        pairs.sort(key=lambda po: (po[0]["__row"] ^ (po[1] or {}).get("__row", 0), po[0]["__row"],
                                   (po[1] or {}).get("__row", 0)))
        for p, o in pairs[:3]:
            o = o or {}
            out.append({**p, "extra__zone": o.get("zone"), "extra__spend": o.get("spend"),
                        "__v_extra__spend": o.get("__v_spend")})
    return out


def _lookup_join() -> list[Row]:
    """trips LEFT JOIN regions on zone = code, lookup rows of a repeated code dropped."""
    codes = Counter(r["code"] for r in TABLES["regions"])
    unique = {r["code"]: r for r in TABLES["regions"] if codes[r["code"]] == 1}
    return [{**p, "regions__name": unique.get(p["zone"], {}).get("name"),
             "regions__pop": unique.get(p["zone"], {}).get("pop"),
             "__v_regions__pop": unique.get(p["zone"], {}).get("__v_pop")} for p in TABLES["trips"]]


def _key(key: GroupKey, row: Row) -> object:
    v = row[key.column]
    return v if key.bin_width is None or v is None else math.floor(v / key.bin_width) * key.bin_width


def _round(x: float) -> int:
    """DuckDB's ROUND of a DOUBLE: half away from zero."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def _measure(prim: Primitive, ds: Dataset, rows: list[Row]) -> object:
    if prim.kind == "count":
        return len(rows) if prim.column is None else sum(r[prim.column] is not None for r in rows)
    if prim.kind in ("units", "select"):
        return len(rows) if ds.privacy_unit == "row" else len({r["__unit"] for r in rows})
    assert prim.column is not None
    values = [r[f"__v_{prim.column}"] for r in rows if r[f"__v_{prim.column}"] is not None]
    if not values:
        return None
    c = spread.centring(ds.columns[prim.column])
    if prim.kind == "centred_sum":
        return sum(v - c.centre for v in values)
    if prim.kind == "centred_sumsq":
        return sum(_round((v - c.centre) * (v - c.centre) / 2**c.shift) for v in values)
    return sum(values)


def _expected(plan: DPPlan, rows: list[Row], where: Callable[[Row], bool]) -> list[Counter]:
    """Per engine query (the aggregates, then each quantile's cells), its rows as a multiset."""
    keys = plan.query.group_keys
    kept = [r for r in rows if where(r)]
    scalar = [p for p in plan.primitives if p.kind != "quantile"]
    out = []
    if scalar:
        groups: dict[tuple, list[Row]] = {}
        for r in kept:
            groups.setdefault(tuple(_key(k, r) for k in keys), []).append(r)
        out.append(Counter(g + tuple(_measure(p, plan.dataset, rs) for p in scalar) for g, rs in groups.items()))
    for prim in plan.primitives:
        if prim.kind == "quantile":
            grid = quantile_grid(plan.dataset.columns[prim.column])
            cells = Counter()
            for r in kept:
                v = r[f"__v_{prim.column}"]
                if v is not None:
                    cells[tuple(_key(k, r) for k in keys) + ((v - grid.low) // grid.step,
                                                             (v - grid.low) % grid.step == 0)] += 1
            out.append(Counter({cell + (n,): 1 for cell, n in cells.items()}))
    return out


# --- the cases --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    query: str
    golden: tuple[str, ...]  # the aggregate query (if any), then one per quantile
    rows: Callable[[], list[Row]] = lambda: TABLES["trips"]
    where: Callable[[Row], bool] = lambda _r: True


CASES = [
    Case(
        "count",
        "SELECT COUNT(*) AS n, COUNT(km) AS with_km, COUNT(DISTINCT pid) AS people FROM trips",
        ('SELECT COUNT(*) AS "a0", COUNT("km") AS "a1", COUNT(DISTINCT "__unit") AS "a2" FROM "trips"',),
    ),
    Case(
        "grouped-sum-binned",
        "SELECT zone, FLOOR(km / 2.5) * 2.5 AS band, SUM(fare) AS s, SUM(temp) AS t FROM trips GROUP BY zone, band",
        (
            'SELECT "zone" AS "k0", FLOOR("km" / 2.5) * 2.5 AS "k1", SUM("__v_fare") AS "a0", SUM("__v_temp") AS '
            '"a1" FROM "trips" GROUP BY "zone", FLOOR("km" / 2.5) * 2.5',
        ),
    ),
    Case(
        "mean-and-spreads",
        "SELECT zone, AVG(km) AS m, VAR_POP(temp) AS v, STDDEV_SAMP(fare) AS sd FROM trips GROUP BY zone",
        (
            'SELECT "zone" AS "k0", SUM("__v_km") AS "a0", COUNT("km") AS "a1", COUNT("temp") AS "a2", '
            'SUM((CAST("__v_temp" AS BIGINT) - -10)) AS "a3", SUM((CAST("__v_temp" AS BIGINT) - -10) * '
            '(CAST("__v_temp" AS BIGINT) - -10)) AS "a4", COUNT("fare") AS "a5", SUM((CAST("__v_fare" AS BIGINT) '
            '- 10000000)) AS "a6", SUM(CAST(ROUND(CAST((CAST("__v_fare" AS BIGINT) - 10000000) AS DOUBLE) * '
            '(CAST("__v_fare" AS BIGINT) - 10000000) / 128.0) AS BIGINT)) AS "a7" FROM "trips" GROUP BY "zone"',
        ),
    ),
    Case(
        "quantile-counts",
        "SELECT FLOOR(km / 10) * 10 AS band, MEDIAN(temp) AS m, QUANTILE_CONT(fare, 0.9) AS q FROM trips "
        "WHERE zone <> 'c' GROUP BY band",
        (
            'SELECT FLOOR("km" / 10) * 10 AS "k0", ("__v_temp" - -30) // 1 AS "qg", ("__v_temp" - -30) % 1 = 0 AS '
            '"qat", COUNT(*) AS "qn" FROM "trips" WHERE NOT "__v_temp" IS NULL AND COALESCE(TRY("zone" <> \'c\'), '
            'FALSE) GROUP BY FLOOR("km" / 10) * 10, ("__v_temp" - -30) // 1, ("__v_temp" - -30) % 1 = 0',
            'SELECT FLOOR("km" / 10) * 10 AS "k0", ("__v_fare" - 0) // 20021 AS "qg", ("__v_fare" - 0) % 20021 = '
            '0 AS "qat", COUNT(*) AS "qn" FROM "trips" WHERE NOT "__v_fare" IS NULL AND COALESCE(TRY("zone" <> '
            '\'c\'), FALSE) GROUP BY FLOOR("km" / 10) * 10, ("__v_fare" - 0) // 20021, ("__v_fare" - 0) % '
            '20021 = 0',
        ),
        where=lambda r: r["zone"] != "c",
    ),
    Case(
        "where-arithmetic",
        "SELECT COUNT(*) AS n, SUM(km) AS s FROM trips WHERE km * 2 - temp > 30 OR NOT (fare < 1000 OR zone = 'b')",
        (
            'SELECT COUNT(*) AS "a0", SUM("__v_km") AS "a1" FROM "trips" WHERE COALESCE(TRY(CAST("km" AS DOUBLE) '
            '* CAST(2 AS DOUBLE) - CAST("temp" AS DOUBLE) > CAST(30 AS DOUBLE) OR NOT (CAST("fare" AS DOUBLE) < '
            'CAST(1000 AS DOUBLE) OR "zone" = \'b\')), FALSE)',
        ),
        where=lambda r: (r["km"] is not None and r["temp"] is not None and r["km"] * 2 - r["temp"] > 30)
        or (r["zone"] != "b" and r["fare"] is not None and r["fare"] >= 1000),
    ),
    Case(
        "unit-join",
        "SELECT x.zone AS z, COUNT(*) AS n, COUNT(DISTINCT pid) AS people, SUM(x.spend) AS s, SUM(t.km) AS k "
        "FROM trips AS t JOIN extra AS x ON t.pid = x.pid WHERE t.temp + x.spend > 0 GROUP BY x.zone",
        (
            'SELECT "extra__zone" AS "k0", COUNT(*) AS "a0", COUNT(DISTINCT "__unit") AS "a1", '
            'SUM("__v_extra__spend") AS "a2", SUM("__v_km") AS "a3" FROM (SELECT * EXCLUDE ("__rank"), "__rank" = '
            '1 AS "__unit_first" FROM (SELECT "p"."zone", "p"."km", "p"."temp", "p"."fare", "p"."__v_km", '
            '"p"."__v_temp", "p"."__v_fare", "p"."__unit", "l"."zone" AS "extra__zone", "l"."spend" AS '
            '"extra__spend", "l"."__v_spend" AS "__v_extra__spend", ROW_NUMBER() OVER (PARTITION BY "p"."__unit" '
            'ORDER BY XOR("p"."__row", COALESCE("l"."__row", 0)), "p"."__row", COALESCE("l"."__row", 0)) AS '
            '"__rank" FROM "trips" AS "p" JOIN "extra" AS "l" ON "p"."__unit" = "l"."__unit") WHERE "__rank" <= '
            '3) AS "trips" WHERE COALESCE(TRY(CAST("temp" AS DOUBLE) + CAST("extra__spend" AS DOUBLE) > CAST(0 AS '
            'DOUBLE)), FALSE) GROUP BY "extra__zone"',
        ),
        rows=lambda: _unit_join(left=False),
        where=lambda r: r["temp"] is not None and r["extra__spend"] is not None and r["temp"] + r["extra__spend"] > 0,
    ),
    Case(
        "unit-left-join-quantile",
        "SELECT COUNT(*) AS n, MEDIAN(x.spend) AS m FROM trips AS t LEFT JOIN extra AS x ON t.pid = x.pid",
        (
            'SELECT COUNT(*) AS "a0" FROM (SELECT * EXCLUDE ("__rank"), "__rank" = 1 AS "__unit_first" FROM '
            '(SELECT "p"."zone", "p"."km", "p"."temp", "p"."fare", "p"."__v_km", "p"."__v_temp", "p"."__v_fare", '
            '"p"."__unit", "l"."zone" AS "extra__zone", "l"."spend" AS "extra__spend", "l"."__v_spend" AS '
            '"__v_extra__spend", ROW_NUMBER() OVER (PARTITION BY "p"."__unit" ORDER BY XOR("p"."__row", '
            'COALESCE("l"."__row", 0)), "p"."__row", COALESCE("l"."__row", 0)) AS "__rank" FROM "trips" AS "p" '
            'LEFT JOIN "extra" AS "l" ON "p"."__unit" = "l"."__unit") WHERE "__rank" <= 3) AS "trips"',
            'SELECT ("__v_extra__spend" - 0) // 1 AS "qg", ("__v_extra__spend" - 0) % 1 = 0 AS "qat", COUNT(*) AS '
            '"qn" FROM (SELECT * EXCLUDE ("__rank"), "__rank" = 1 AS "__unit_first" FROM (SELECT "p"."zone", '
            '"p"."km", "p"."temp", "p"."fare", "p"."__v_km", "p"."__v_temp", "p"."__v_fare", "p"."__unit", '
            '"l"."zone" AS "extra__zone", "l"."spend" AS "extra__spend", "l"."__v_spend" AS "__v_extra__spend", '
            'ROW_NUMBER() OVER (PARTITION BY "p"."__unit" ORDER BY XOR("p"."__row", COALESCE("l"."__row", 0)), '
            '"p"."__row", COALESCE("l"."__row", 0)) AS "__rank" FROM "trips" AS "p" LEFT JOIN "extra" AS "l" ON '
            '"p"."__unit" = "l"."__unit") WHERE "__rank" <= 3) AS "trips" WHERE NOT "__v_extra__spend" IS NULL '
            'GROUP BY ("__v_extra__spend" - 0) // 1, ("__v_extra__spend" - 0) % 1 = 0',
        ),
        rows=lambda: _unit_join(left=True),
    ),
    Case(
        "lookup-left-join",
        "SELECT r.name AS name, COUNT(*) AS n, SUM(r.pop) AS p FROM trips AS t LEFT JOIN regions AS r "
        "ON t.zone = r.code GROUP BY r.name",
        (
            'SELECT "regions__name" AS "k0", COUNT(*) AS "a0", SUM("__v_regions__pop") AS "a1" FROM (SELECT '
            '"p"."zone", "p"."km", "p"."temp", "p"."fare", "p"."__v_km", "p"."__v_temp", "p"."__v_fare", '
            '"p"."__unit_first", "p"."__unit", "p"."__row", "l"."code" AS "regions__code", "l"."name" AS '
            '"regions__name", "l"."pop" AS "regions__pop", "l"."__v_pop" AS "__v_regions__pop" FROM "trips" AS '
            '"p" LEFT JOIN (SELECT * FROM "regions" QUALIFY COUNT(*) OVER (PARTITION BY CAST("code" AS TEXT)) = '
            '1) AS "l" ON CAST("p"."zone" AS TEXT) = CAST("l"."code" AS TEXT)) AS "trips" GROUP BY "regions__name"',
        ),
        rows=_lookup_join,
    ),
]


def _plan(case: Case) -> DPPlan:
    query = analyze(case.query, CATALOG, GRANTED)
    ds = CATALOG[query.dataset]
    if query.join is not None:
        ds = joined_dataset(ds, CATALOG[query.join.lookup])
    return plan_dp(query, ds, 1.0)


def _engine_sql(plan: DPPlan) -> list[str]:
    """The queries ``Engine.exact`` runs for the plan, through the string API."""
    scalar = tuple(p for p in plan.primitives if p.kind != "quantile")
    sqls = [aggregate_sql(plan, scalar)] if scalar else []
    for prim in plan.primitives:
        if prim.kind == "quantile":
            sqls.append(quantile_counts_sql(plan, prim, quantile_grid(plan.dataset.columns[prim.column])))
    return sqls


def _engine_trees(plan: DPPlan) -> list[exp.Select]:
    scalar = tuple(p for p in plan.primitives if p.kind != "quantile")
    trees = [aggregate_tree(plan, scalar)] if scalar else []
    for prim in plan.primitives:
        if prim.kind == "quantile":
            trees.append(quantile_counts_tree(plan, prim, quantile_grid(plan.dataset.columns[prim.column])))
    return trees


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_engine_sql_is_the_golden_text(case: Case) -> None:
    assert tuple(_engine_sql(_plan(case))) == case.golden


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_golden_text_computes_what_the_plan_means(case: Case, con: duckdb.DuckDBPyConnection) -> None:
    plan = _plan(case)
    expected = _expected(plan, case.rows(), case.where)
    assert len(expected) == len(case.golden)
    for sql, want in zip(case.golden, expected, strict=True):
        got = con.execute(sql).fetchall()
        assert Counter(got) == want, sql
        if "qg" in sql:  # candidate cells stay integers (DuckDB's // of BIGINTs), never DOUBLE
            assert all(type(row[-3]) is int and type(row[-2]) is bool for row in got)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_strings_are_the_trees_and_every_identifier_is_quoted(case: Case) -> None:
    plan = _plan(case)
    trees = _engine_trees(plan)
    assert [tree.sql(dialect="duckdb") for tree in trees] == _engine_sql(plan)
    for tree in trees:
        names = list(tree.find_all(exp.Identifier))
        assert names and all(name.quoted for name in names), [n.name for n in names if not n.quoted]


def test_declared_columns_named_like_the_engine_outputs_do_not_capture_the_grouping() -> None:
    """A catalog may declare ``k0``, ``qg`` or ``qat``: DuckDB binds a real column before an
    output name, so the engine groups by its key expressions, never by its output names."""
    odd = Dataset.model_validate({
        "id": "odd", "title": "odd", "source": "odd.parquet", "classification": "L2",
        "privacy_unit": "row", "max_rows_per_unit": 1,
        "columns": {"zone": {"type": "category", "values": ["a", "b"]},
                    "k0": {"type": "category", "values": ["x", "y"]},
                    "qg": {"type": "int", "bounds": [0, 9]}, "qat": {"type": "int", "bounds": [0, 9]}},
    })
    rows = [("a", "x", 1, 2), ("a", "y", 3, 4), ("b", "x", 5, 6), ("a", "x", 7, 8)]
    db = duckdb.connect()
    db.execute('CREATE TABLE odd (zone VARCHAR, k0 VARCHAR, qg BIGINT, qat BIGINT, "__v_qg" BIGINT, '
               '"__v_qat" BIGINT, "__row" UBIGINT, "__unit_first" BOOLEAN)')
    db.executemany("INSERT INTO odd VALUES (?, ?, ?, ?, ?, ?, 0, TRUE)", [(*r, r[2], r[3]) for r in rows])
    query = analyze("SELECT zone, COUNT(*) AS n, SUM(qg) AS s FROM odd GROUP BY zone", {"odd": odd},
                    {"odd": {"zone", "k0", "qg", "qat"}})
    plan = plan_dp(query, odd, 1.0)
    got = sorted(db.execute(aggregate_sql(plan)).fetchall())
    assert got == [("a", 3, 11), ("b", 1, 5)]
    qplan = plan_dp(analyze("SELECT zone, MEDIAN(qat) AS m FROM odd GROUP BY zone", {"odd": odd},
                            {"odd": {"zone", "qat"}}), odd, 1.0)
    prim = next(p for p in qplan.primitives if p.kind == "quantile")
    cells = db.execute(quantile_counts_sql(qplan, prim, quantile_grid(odd.columns["qat"]))).fetchall()
    assert sum(n for *_k, n in cells) == 4 and {k for k, *_ in cells} == {"a", "b"}
