"""Focused tests of the plan the analyser returns: key domains, output names, the WHERE tree.

Uses the real catalog (``policies/``) and small hand-made datasets for edge cases.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlglot import exp

from sandbox.errors import BadRequest, SandboxError
from sandbox.policy.loader import load_policies
from sandbox.policy.models import Column, Dataset
from sandbox.sql.analyze import analyze
from sandbox.sql.plan import QueryPlan

POLICIES = Path(__file__).resolve().parents[2] / "policies"
_POLICIES = load_policies(POLICIES)
CATALOG = _POLICIES.datasets
GRANTED = {ds: frozenset(g.columns) for ds, g in _POLICIES.grants["g-2026-001"].datasets.items()}

SENSORS = Dataset(
    id="sensors",
    title="Hand-made test dataset",
    source="sensors.parquet",
    classification="L1",
    privacy_unit="device",
    max_rows_per_unit=10,
    columns={
        "device": Column(type="id"),
        "temp": Column(type="int", bounds=(-15, 25)),
        "reading": Column(type="int", bounds=(0, 5000)),
        "exactly_1000": Column(type="int", bounds=(1, 1000)),
        "hundred_a": Column(type="int", bounds=(1, 100)),
        "hundred_b": Column(type="int", bounds=(1, 100)),
        "level": Column(type="float", bounds=(-1.0, 1.0)),
        "zone": Column(type="category", values=("north", "south")),
    },
)
SENSORS_GRANTED = {"sensors": frozenset(c for c in SENSORS.columns if c != "device")}


def run(sql: str) -> QueryPlan:
    return analyze(sql, CATALOG, GRANTED)


def run_sensors(sql: str) -> QueryPlan:
    return analyze(sql, {"sensors": SENSORS}, SENSORS_GRANTED)


def code_of(call, sql: str) -> str:  # noqa: ANN001
    with pytest.raises(SandboxError) as info:
        call(sql)
    return info.value.code


# --- key domains -------------------------------------------------------------------------


def test_category_domain_keeps_declared_order() -> None:
    plan = run("SELECT race, COUNT(*) FROM nhanes_2017 GROUP BY race")
    (key,) = plan.group_keys
    assert key.values == CATALOG["nhanes_2017"].columns["race"].values
    assert key.values[0] == "mexican_american" and key.bin_width is None
    adult = run("SELECT sex, occupation, COUNT(*) FROM adult_income GROUP BY sex, occupation")
    assert adult.group_keys[0].values == ("Female", "Male")
    assert adult.group_keys[1].values == CATALOG["adult_income"].columns["occupation"].values
    assert adult.n_groups == 2 * 14


def test_int_domain_is_every_whole_number_within_bounds() -> None:
    (key,) = run("SELECT age, COUNT(*) FROM adult_income GROUP BY age").group_keys
    assert key.values == tuple(range(17, 91))
    assert all(type(v) is int for v in key.values)
    (neg,) = run_sensors("SELECT temp, COUNT(*) FROM sensors GROUP BY temp").group_keys
    assert neg.values[0] == -15 and neg.values[-1] == 25 and len(neg.values) == 41


def test_int_domain_of_1000_is_accepted_and_1001_refused() -> None:
    (key,) = run_sensors("SELECT exactly_1000, COUNT(*) FROM sensors GROUP BY 1").group_keys
    assert len(key.values) == 1000
    with pytest.raises(BadRequest) as info:
        run_sensors("SELECT reading, COUNT(*) FROM sensors GROUP BY reading")
    assert info.value.code == "unbounded_group_keys"
    assert "FLOOR(reading /" in info.value.message  # suggests a bin


def test_int_bins_stay_ints() -> None:
    (key,) = run("SELECT FLOOR(age / 10) * 10 AS d, COUNT(*) FROM nhanes_2017 GROUP BY d").group_keys
    assert key.column == "age" and key.bin_width == 10 and type(key.bin_width) is int
    assert key.values == (0, 10, 20, 30, 40, 50, 60, 70, 80)
    assert all(type(v) is int for v in key.values)


def test_int_bins_with_negative_bounds_floor_downwards() -> None:
    (key,) = run_sensors("SELECT FLOOR(temp / 10) * 10 AS t, COUNT(*) FROM sensors GROUP BY t").group_keys
    assert key.values == (-20, -10, 0, 10, 20)


def test_int_column_with_fractional_or_decimal_width_gives_floats() -> None:
    (frac,) = run("SELECT FLOOR(age / 2.5) * 2.5 AS b, COUNT(*) FROM nhanes_2017 GROUP BY b").group_keys
    assert frac.bin_width == 2.5 and frac.values[:3] == (0.0, 2.5, 5.0) and frac.values[-1] == 80.0
    (dec,) = run("SELECT FLOOR(age / 10.0) * 10.0 AS b, COUNT(*) FROM nhanes_2017 GROUP BY b").group_keys
    assert dec.bin_width == 10.0 and type(dec.bin_width) is float
    assert all(type(v) is float for v in dec.values)


def test_float_bins_cover_the_bounds() -> None:
    (key,) = run("SELECT FLOOR(income_ratio / 0.5) * 0.5 AS b, COUNT(*) FROM nhanes_2017 GROUP BY b").group_keys
    assert key.values == tuple(k * 0.5 for k in range(11))  # 0.0 .. 5.0
    (w,) = run("SELECT FLOOR(weight_kg / 25) * 25 AS b, COUNT(*) FROM nhanes_2017 GROUP BY b").group_keys
    assert w.bin_width == 25 and w.values == tuple(float(v) for v in range(0, 251, 25))
    (lvl,) = run_sensors("SELECT FLOOR(level / 0.25) * 0.25 AS b, COUNT(*) FROM sensors GROUP BY b").group_keys
    assert lvl.values == (-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0)


def test_float_bin_keys_are_the_doubles_the_engine_computes() -> None:
    # DuckDB evaluates FLOOR(col / 0.1) * 0.1 in DOUBLE: bin 3 is 3 * 0.1 = 0.30000000000000004
    (key,) = run("SELECT FLOOR(income_ratio / 0.1) * 0.1 AS b, COUNT(*) FROM nhanes_2017 GROUP BY b").group_keys
    assert len(key.values) == 51
    assert key.values[3] == 3 * 0.1
    assert key.values == tuple(k * 0.1 for k in range(51))


def test_bin_width_must_be_one_positive_number() -> None:
    for sql in (
        "SELECT FLOOR(age / 10) * 5 AS b, COUNT(*) FROM nhanes_2017 GROUP BY b",
        "SELECT FLOOR(age / 0) * 0 AS b, COUNT(*) FROM nhanes_2017 GROUP BY b",
        "SELECT FLOOR(age / '10') * '10' AS b, COUNT(*) FROM nhanes_2017 GROUP BY b",
        "SELECT FLOOR(age / 1e-400) * 1e-400 AS b, COUNT(*) FROM nhanes_2017 GROUP BY b",
    ):
        assert code_of(run, sql) == "unbounded_group_keys", sql


def test_group_product_cap_is_inclusive() -> None:
    plan = run_sensors("SELECT hundred_a, hundred_b, COUNT(*) FROM sensors GROUP BY 1, 2")
    assert plan.n_groups == 10_000
    sql = "SELECT hundred_a, hundred_b, zone, COUNT(*) FROM sensors GROUP BY 1, 2, 3"
    assert code_of(run_sensors, sql) == "too_many_groups"


def test_same_key_twice_is_refused() -> None:
    sql = "SELECT sex, COUNT(*) FROM nhanes_2017 GROUP BY sex, 1"
    assert code_of(run, sql) == "duplicate_column_name"
    sql = "SELECT sex, sex AS s2, COUNT(*) FROM nhanes_2017 GROUP BY sex"
    assert code_of(run, sql) == "duplicate_column_name"


def test_column_name_wins_over_alias_in_group_by() -> None:
    # as in SQL, GROUP BY age means the column even when a SELECT item is aliased age
    sql = "SELECT FLOOR(age / 10) * 10 AS age, COUNT(*) FROM nhanes_2017 GROUP BY age"
    assert code_of(run, sql) == "not_aggregate"


# --- output naming -----------------------------------------------------------------------


def test_default_output_names() -> None:
    plan = run(
        "SELECT sex, FLOOR(age / 10) * 10, COUNT(*), COUNT(race), SUM(weight_kg), AVG(height_cm) "
        "FROM nhanes_2017 GROUP BY 1, 2"
    )
    assert plan.columns == ("sex", "age_bin", "count", "count_race", "sum_weight_kg", "avg_height_cm")
    assert [a.name for a in plan.aggregates] == ["count", "count_race", "sum_weight_kg", "avg_height_cm"]
    assert [k.name for k in plan.group_keys] == ["sex", "age_bin"]


def test_aliases_name_outputs_and_are_folded() -> None:
    plan = run('SELECT sex AS Gender, COUNT(*) AS "n", AVG(age) AS Mean_Age FROM nhanes_2017 GROUP BY gender')
    assert plan.columns == ("gender", "n", "mean_age")
    assert plan.group_keys[0].name == "gender" and plan.group_keys[0].column == "sex"
    assert plan.aggregates[1].name == "mean_age"
    assert "AS gender" in plan.normalized_sql and "AS mean_age" in plan.normalized_sql


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT COUNT(*), COUNT(*) FROM nhanes_2017",
        "SELECT COUNT(*) AS count_age, COUNT(age) FROM nhanes_2017",
        "SELECT SUM(age) AS a, AVG(age) AS a FROM nhanes_2017",
        "SELECT FLOOR(age / 10) * 10, FLOOR(age / 20) * 20, COUNT(*) FROM nhanes_2017 GROUP BY 1, 2",
        "SELECT sex, COUNT(*) AS sex FROM nhanes_2017 GROUP BY sex",
    ],
)
def test_duplicate_output_names_are_refused(sql: str) -> None:
    assert code_of(run, sql) == "duplicate_column_name"


def test_two_bins_of_one_column_with_aliases() -> None:
    plan = run("SELECT FLOOR(age / 10) * 10 AS d, FLOOR(age / 40) * 40 AS h, COUNT(*) FROM nhanes_2017 GROUP BY d, h")
    assert [(k.name, k.bin_width, len(k.values)) for k in plan.group_keys] == [("d", 10, 9), ("h", 40, 3)]


def test_order_by_resolves_to_output_names() -> None:
    plan = run("SELECT sex AS s, COUNT(*) AS n, AVG(age) FROM nhanes_2017 GROUP BY s ORDER BY 3 DESC, s, N ASC LIMIT 2")
    assert [(o.name, o.descending) for o in plan.order_by] == [("avg_age", True), ("s", False), ("n", False)]
    assert plan.limit == 2


# --- the WHERE tree ----------------------------------------------------------------------

WHERE_NODES = {
    exp.Column, exp.Identifier, exp.Literal, exp.Boolean, exp.Null, exp.Paren, exp.Neg,
    exp.EQ, exp.NEQ, exp.LT, exp.LTE, exp.GT, exp.GTE, exp.And, exp.Or, exp.Not,
    exp.In, exp.Between, exp.Is, exp.Add, exp.Sub, exp.Mul, exp.Div,
}  # fmt: skip


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT COUNT(*) FROM nhanes_2017 AS n WHERE n.age >= 18 AND n.sex = 'female'",
        "SELECT COUNT(*) FROM nhanes_2017 WHERE nhanes_2017.race IN ('other_or_multi') OR NOT (age < -1)",
        "SELECT COUNT(*) FROM nhanes_2017 t /* c */ WHERE t.weight_kg / (t.height_cm * t.height_cm) * 10000 > 30 "
        "-- bmi\n AND t.education IS NOT NULL AND t.age BETWEEN 20 AND 60 AND t.general_health = NULL",
        'SELECT COUNT(*) FROM nhanes_2017 WHERE "income_ratio" <= 1.5 AND TRUE',
    ],
)
def test_where_has_only_allowed_nodes_and_unqualified_columns(sql: str) -> None:
    where = run(sql).where
    assert where is not None and where.parent is None  # a detached copy
    for node in where.walk():
        assert type(node) in WHERE_NODES, type(node).__name__
        assert not node.comments
        if isinstance(node, exp.Column):
            assert set(k for k, v in node.args.items() if v is not None) == {"this"}
            assert not node.this.quoted
            assert node.name in GRANTED["nhanes_2017"]


def test_where_is_independent_of_the_normalized_text() -> None:
    plan = run("SELECT COUNT(*) FROM nhanes_2017 AS n WHERE n.age > 18")
    assert plan.where.sql(dialect="duckdb") == "age > 18"
    assert plan.normalized_sql == "SELECT COUNT(*) FROM nhanes_2017 WHERE age > 18"
    plan.where.set("this", exp.column("sex"))
    assert run("SELECT COUNT(*) FROM nhanes_2017 AS n WHERE n.age > 18").where.sql() == "age > 18"


def test_no_where_gives_none() -> None:
    assert run("SELECT COUNT(*) FROM nhanes_2017").where is None


# --- normalized SQL ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT sex, COUNT(*) AS n FROM nhanes_2017 n WHERE n.age > 18 GROUP BY 1 ORDER BY n DESC LIMIT 5",
        "select floor(AGE / 2.5) * 2.5 as B, avg(income_ratio) from NHANES_2017 group by b -- x",
        "SELECT COUNT(*) FROM adult_income WHERE income = '>50K' AND sex IN ('Female') AND NOT age IS NULL",
    ],
)
def test_normalized_sql_is_a_fixed_point(sql: str) -> None:
    first = run(sql)
    again = run(first.normalized_sql)
    assert again.normalized_sql == first.normalized_sql
    assert again.columns == first.columns and again.group_keys == first.group_keys
    assert again.aggregates == first.aggregates and again.order_by == first.order_by
