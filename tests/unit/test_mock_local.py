"""The notebook's local evaluation (mock mode) selects and groups rows exactly as the engine does.

For every golden accepted query, the rows kept by WHERE and the keys they fall in are counted
twice over the same mock rows: by ``sandbox.sql.local`` (plain Python) and by DuckDB running
the engine's own predicate and key SQL (``sandbox.engine``). The counts must be equal.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import duckdb
import pytest
from sqlglot import exp

from sandbox.engine_sql import key_tree, where_tree
from sandbox.mock import mock_frame
from sandbox.sql._eval import evaluate
from sandbox.sql.analyze import analyze
from sandbox.sql.local import answer_locally
from sandbox.sql.plan import Aggregate, QueryPlan

_spec = importlib.util.spec_from_file_location("sql_golden_cases_local", Path(__file__).with_name("test_sql_golden.py"))
assert _spec is not None and _spec.loader is not None
golden = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = golden
_spec.loader.exec_module(golden)


@pytest.fixture(scope="module")
def tables() -> tuple[dict, duckdb.DuckDBPyConnection]:
    con = duckdb.connect()
    rows = {}
    for ds_id, ds in golden.CATALOG.items():
        frame = mock_frame(ds, rows=400, seed=3)
        con.register("f", frame)
        con.execute(f'CREATE TABLE "{ds_id}" AS SELECT * FROM f')
        con.unregister("f")
        rows[ds_id] = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return rows, con


def _counts_plan(plan: QueryPlan) -> QueryPlan:
    """The same WHERE and keys, with one COUNT(*) as the only aggregate."""
    names = tuple(k.name for k in plan.group_keys) + ("n",)
    return QueryPlan(plan.dataset, names, (Aggregate("count", None, "n"),), plan.group_keys, plan.where)


EXTRA = [
    "SELECT COUNT(*) FROM nhanes_2017 WHERE age / 0 > 1 OR sex = 'male'",
    "SELECT COUNT(*) FROM nhanes_2017 WHERE NOT (income_ratio > 2.5 AND education IS NULL)",
    "SELECT race, COUNT(*) FROM nhanes_2017 WHERE weight_kg * 2 - height_cm BETWEEN -10 AND 40 GROUP BY race",
    "SELECT FLOOR(income_ratio / 0.3) * 0.3 AS b, COUNT(*) FROM nhanes_2017 WHERE -age < -18 GROUP BY b",
    "SELECT COUNT(*) FROM adult_income WHERE education IN ('Bachelors', 'Masters') OR hours_per_week >= 60",
    "SELECT COUNT(*) FROM nhanes_2017 WHERE age IN (10, NULL) OR NOT general_health <> 'good'",
]


def test_local_where_and_keys_match_the_engine(tables) -> None:  # noqa: ANN001
    rows, con = tables
    checked = 0
    for sql_text in [p.values[0] for p in golden.ACCEPTED] + EXTRA:
        plan = _counts_plan(analyze(sql_text, golden.CATALOG, golden.GRANTED))
        ds = golden.CATALOG[plan.dataset]
        _, local = answer_locally(rows[plan.dataset], plan, ds)
        keys = [key_tree(k) for k in plan.group_keys]
        table = exp.Table(this=exp.to_identifier(ds.id, quoted=True))
        select = exp.select(*keys, exp.Count(this=exp.Star())).from_(table)
        if plan.where is not None:
            select = select.where(where_tree(plan.where, ds))
        if keys:
            select = select.group_by(*(k.copy() for k in keys))
        sql = select.sql(dialect="duckdb")
        engine = {tuple(r[:-1]): r[-1] for r in con.execute(sql).fetchall()}
        for line in local:
            key = tuple(line[:-1])
            expected = next((n for k, n in engine.items() if all(_same(a, b) for a, b in zip(k, key, strict=True))), 0)
            assert line[-1] == expected, (sql_text, key)
        checked += 1
    assert checked == len(golden.ACCEPTED) + len(EXTRA) > 40


def _same(a: object, b: object) -> bool:
    if isinstance(a, float | int) and isinstance(b, float | int):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
    return a == b


@pytest.mark.parametrize(
    ("predicate", "row", "expected"),
    [
        ("a > 1", {"a": None}, None),
        ("a > 1 OR TRUE", {"a": None}, True),
        ("a > 1 AND FALSE", {"a": None}, False),
        ("NOT a > 1", {"a": None}, None),
        ("a IS NULL", {"a": None}, True),
        ("NOT a IS NULL", {"a": 3}, True),
        ("a / 0 > 1", {"a": 3}, True),  # DOUBLE division, as in the engine: +inf
        ("a / 0 = a / 0", {"a": 0}, True),  # NaN = NaN in DuckDB
        ("a IN (1, 2)", {"a": 2}, True),
        ("a IN (1, NULL)", {"a": 2}, None),
        ("a BETWEEN 1 AND 3", {"a": 3}, True),
        ("s = 'x'", {"s": "x"}, True),
        ("-a + 2 * a = 3", {"a": 3}, True),
    ],
)
def test_predicate_logic_is_sql_three_valued(predicate: str, row: dict, expected: object) -> None:
    tree = exp.maybe_parse(predicate, dialect="duckdb")
    assert evaluate(tree, row) is expected


def test_mock_mode_groups_by_text_and_counts_units() -> None:
    from sandbox.mock import MockClient

    entry = {"grant": "g", "dataset": "visits", "privacy_unit": "pid", "max_rows_per_unit": 3,
             "columns": [{"name": "city", "type": "text"}, {"name": "cost", "type": "int", "bounds": [0, 100]}]}
    db = MockClient.from_catalog([entry], "g", rows=600, seed=4)
    df = db.query("SELECT city, COUNT(*) AS n, COUNT(DISTINCT pid) AS people FROM visits GROUP BY city", epsilon=1)
    assert len(df) > 1 and df["n"].sum() <= 600 and (df["people"] <= df["n"]).all()
    assert list(df["city"]) == sorted(df["city"])
    frame = db.mock("visits", rows=600, seed=4)
    assert frame["pid"].value_counts().max() <= 3 and frame.attrs["mock"] is True
