"""Golden tables for the forms added after the first subset: HAVING, spread, units, quantiles.

Same catalog and grant as test_sql_golden.py (the real policies, grant g-2026-001). Each form
has accepted variants (with the plan they must give) and refused variants (with their code).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sandbox.errors import SandboxError
from sandbox.policy.loader import load_policies
from sandbox.policy.models import Dataset
from sandbox.sql.analyze import analyze
from sandbox.sql.plan import QueryPlan

POLICIES = Path(__file__).resolve().parents[2] / "policies"
_POLICIES = load_policies(POLICIES)
CATALOG = _POLICIES.datasets
GRANTED = {ds: frozenset(g.columns) for ds, g in _POLICIES.grants["g-2026-001"].datasets.items()}


def run(sql: str) -> QueryPlan:
    return analyze(sql, CATALOG, GRANTED)


def refused(sql: str, code: str, name: str) -> object:
    return pytest.param(sql, code, GRANTED, id=name)


def accepted(sql: str, name: str, **expect: object) -> object:
    return pytest.param(sql, expect, id=name)


REFUSED = [
    # HAVING reads released values only
    refused("SELECT sex, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex HAVING SUM(age) > 5", "having_not_selected",
            "having-unselected-aggregate"),
    refused("SELECT sex, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex HAVING AVG(age) > 30", "having_not_selected",
            "having-unselected-avg"),
    refused("SELECT sex, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex HAVING age > 5", "unknown_column",
            "having-input-column"),
    refused("SELECT sex, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex HAVING nhanes_2017.n > 5", "unknown_column",
            "having-qualified"),
    refused("SELECT sex, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex HAVING n", "type_mismatch",
            "having-not-condition"),
    refused("SELECT sex, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex HAVING sex > 5", "type_mismatch",
            "having-type-mismatch"),
    refused("SELECT sex, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex HAVING n > (SELECT 1)", "subquery_not_allowed",
            "having-subquery"),
    refused("SELECT sex, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex HAVING ABS(n) > 5", "unsupported_function",
            "having-function"),
    refused("SELECT sex, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex HAVING n LIKE '1%'", "unsupported_expression",
            "having-like"),
    refused("SELECT sex, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex HAVING COUNT(weight_kg) > 1",
            "having_not_selected", "having-other-count"),
    refused("SELECT sex, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex HAVING SUM(total_cholesterol) > 1",
            "column_not_granted", "having-not-granted"),
    refused("SELECT sex, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex HAVING COUNT(seqn) > 1", "id_column",
            "having-id"),
    refused("SELECT sex, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex HAVING MIN(n) > 1", "unknown_column",
            "having-aggregate-of-output"),
    refused("SELECT sex, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex HAVING n IN (SELECT 1)", "subquery_not_allowed",
            "having-in-subquery"),
    refused("SELECT sex, COUNT(*) AS n FROM nhanes_2017 AS t GROUP BY sex HAVING COUNT(t.age) > 1 OR n > 1",
            "having_not_selected", "having-qualified-unselected"),
    refused("SELECT sex, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex HAVING n > 1e999", "unsupported_expression",
            "having-infinite-literal"),
]

REFUSED += [
    # spread: numeric columns, one plain column, no DISTINCT, no arithmetic around it
    refused("SELECT VAR_POP(sex) FROM nhanes_2017", "not_numeric", "var-category"),
    refused("SELECT STDDEV(age * 2) FROM nhanes_2017", "unsupported_expression", "stddev-expression"),
    refused("SELECT VAR_SAMP(total_cholesterol) FROM nhanes_2017", "column_not_granted", "var-not-granted"),
    refused("SELECT VAR_POP(seqn) FROM nhanes_2017", "id_column", "var-id"),
    refused("SELECT STDDEV(age) / AVG(age) FROM nhanes_2017", "unsupported_expression", "stddev-arithmetic"),
    refused("SELECT VAR_POP(DISTINCT age) FROM nhanes_2017", "distinct_not_allowed", "var-distinct"),
    refused("SELECT STDDEV(*) FROM nhanes_2017", "not_aggregate", "stddev-star"),
    refused("SELECT COVAR_POP(age, weight_kg) FROM nhanes_2017", "unsupported_function", "covariance"),
    refused("SELECT CORR(age, weight_kg) FROM nhanes_2017", "unsupported_function", "correlation"),
    refused("SELECT KURTOSIS(age) FROM nhanes_2017", "unsupported_function", "kurtosis"),
    refused("SELECT COUNT(*) FROM nhanes_2017 WHERE STDDEV(age) > 1", "unsupported_function", "stddev-in-where"),
]

REFUSED += [
    # people: COUNT(DISTINCT <privacy unit>) is the one place the id may be named
    refused("SELECT COUNT(DISTINCT age) FROM nhanes_2017", "distinct_not_allowed", "units-other-column"),
    refused("SELECT COUNT(DISTINCT seqn + 1) FROM nhanes_2017", "distinct_not_allowed", "units-expression"),
    refused("SELECT COUNT(DISTINCT (seqn)) FROM nhanes_2017", "distinct_not_allowed", "units-parenthesised"),
    refused("SELECT COUNT(DISTINCT seqn, sex) FROM nhanes_2017", "distinct_not_allowed", "units-two-columns"),
    refused("SELECT SUM(DISTINCT seqn) FROM nhanes_2017", "distinct_not_allowed", "units-sum"),
    refused("SELECT COUNT(seqn) FROM nhanes_2017", "id_column", "units-without-distinct"),
    refused("SELECT seqn, COUNT(DISTINCT seqn) FROM nhanes_2017 GROUP BY seqn", "id_column", "units-and-id-key"),
    refused("SELECT COUNT(DISTINCT seqn) FROM nhanes_2017 WHERE seqn > 1", "id_column", "units-id-in-where"),
    refused("SELECT COUNT(DISTINCT x.seqn) FROM nhanes_2017 AS n", "unknown_column", "units-wrong-qualifier"),
    refused("SELECT COUNT(DISTINCT age) FROM adult_income", "distinct_not_allowed", "units-row-dataset"),
    refused("SELECT COUNT(DISTINCT seqn) FROM adult_income", "unknown_column", "units-other-datasets-id"),
    refused("SELECT COUNT(DISTINCT seqn) FILTER (WHERE age > 1) FROM nhanes_2017", "unsupported_clause",
            "units-filter"),
    refused("SELECT COUNT(DISTINCT seqn) OVER () FROM nhanes_2017", "window_not_allowed", "units-window"),
    refused("SELECT COUNT(*) FROM nhanes_2017 WHERE COUNT(DISTINCT seqn) > 1", "unsupported_function",
            "units-in-where"),
]

REFUSED += [
    # quantiles: bounded numeric columns, q a literal in [0, 1], one plain column, not too many cells
    refused("SELECT MEDIAN(sex) FROM nhanes_2017", "not_numeric", "median-category"),
    refused("SELECT QUANTILE_CONT(age, 1.2) FROM nhanes_2017", "unsupported_expression", "quantile-above-1"),
    refused("SELECT QUANTILE_CONT(age, -0.1) FROM nhanes_2017", "unsupported_expression", "quantile-negative"),
    refused("SELECT QUANTILE_CONT(age, '0.5') FROM nhanes_2017", "unsupported_expression", "quantile-string"),
    refused("SELECT QUANTILE_CONT(age, age) FROM nhanes_2017", "unsupported_expression", "quantile-column-q"),
    refused("SELECT QUANTILE_CONT(age, [0.1, 0.9]) FROM nhanes_2017", "unsupported_function", "quantile-list"),
    refused("SELECT QUANTILE_CONT(age) FROM nhanes_2017", "unsupported_expression", "quantile-no-q"),
    refused("SELECT QUANTILE_DISC(age, 0.5) FROM nhanes_2017", "unsupported_function", "quantile-disc"),
    refused("SELECT PERCENTILE_DISC(0.5) WITHIN GROUP (ORDER BY age) FROM nhanes_2017", "unsupported_function",
            "percentile-disc-within-group"),
    refused("SELECT PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY age DESC) FROM nhanes_2017",
            "unsupported_expression", "percentile-desc"),
    refused("SELECT PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY age, weight_kg) FROM nhanes_2017",
            "unsupported_function", "percentile-two-orders"),
    refused("SELECT PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY sex) FROM nhanes_2017", "not_numeric",
            "percentile-category"),
    refused("SELECT MODE(age) FROM nhanes_2017", "unsupported_function", "mode"),
    refused("SELECT MIN(seqn) FROM nhanes_2017", "id_column", "min-id"),
    refused("SELECT MAX(total_cholesterol) FROM nhanes_2017", "column_not_granted", "max-not-granted"),
    refused("SELECT MAX(age) - MIN(age) FROM nhanes_2017", "unsupported_expression", "range-arithmetic"),
    refused("SELECT COUNT(*) FROM nhanes_2017 WHERE age > MEDIAN(age)", "unsupported_function", "median-in-where"),
    refused("SELECT age, race, MEDIAN(height_cm) FROM nhanes_2017 GROUP BY age, race", "too_many_groups",
            "quantile-too-many-cells"),
    refused("SELECT ARG_MIN(age, weight_kg) FROM nhanes_2017", "unsupported_function", "arg-min"),
]

ACCEPTED = [
    accepted("SELECT MEDIAN(age) FROM nhanes_2017", "median", aggregates=(("quantile", "age", 0.5),),
             columns=("median_age",)),
    accepted("SELECT QUANTILE_CONT(weight_kg, 0.9) AS p90 FROM nhanes_2017", "quantile-cont",
             aggregates=(("quantile", "weight_kg", 0.9),), columns=("p90",)),
    accepted("SELECT sex, PERCENTILE_CONT(0.25) WITHIN GROUP (ORDER BY height_cm) AS q1 FROM nhanes_2017 "
             "GROUP BY sex", "percentile-within-group", aggregates=(("quantile", "height_cm", 0.25),),
             columns=("sex", "q1")),
    accepted("SELECT MIN(age), MAX(age) FROM nhanes_2017", "min-max",
             aggregates=(("min", "age", 0.0), ("max", "age", 1.0)), columns=("min_age", "max_age")),
    accepted("SELECT race, MEDIAN(income_ratio) AS m FROM nhanes_2017 WHERE age >= 18 GROUP BY race HAVING m < 2",
             "median-having", having="m < 2"),
    accepted("SELECT sex, QUANTILE_CONT(hours_per_week, 1) AS top FROM adult_income GROUP BY sex",
             "quantile-one", aggregates=(("quantile", "hours_per_week", 1.0),)),
    accepted("SELECT COUNT(DISTINCT seqn) FROM nhanes_2017", "units", aggregates=(("count_units", None, None),),
             columns=("count_units",)),
    accepted("SELECT sex, COUNT(DISTINCT n.seqn) AS people FROM nhanes_2017 AS n GROUP BY sex", "units-qualified",
             aggregates=(("count_units", None, None),), columns=("sex", "people")),
    accepted("SELECT race, COUNT(DISTINCT SEQN) AS people, COUNT(*) AS n FROM nhanes_2017 WHERE age >= 18 "
             "GROUP BY race HAVING COUNT(DISTINCT seqn) > 100", "units-having", having="people > 100"),
    accepted("SELECT VAR_POP(age) FROM nhanes_2017", "var-pop", aggregates=(("var_pop", "age", None),),
             columns=("var_pop_age",)),
    accepted("SELECT VAR_SAMP(age), VARIANCE(weight_kg) FROM nhanes_2017", "var-samp",
             aggregates=(("var_samp", "age", None), ("var_samp", "weight_kg", None)),
             columns=("var_samp_age", "var_samp_weight_kg")),
    accepted("SELECT sex, STDDEV(height_cm) AS sd FROM nhanes_2017 GROUP BY sex", "stddev-grouped",
             aggregates=(("stddev_samp", "height_cm", None),), columns=("sex", "sd")),
    accepted("SELECT STDDEV_POP(income_ratio), STDDEV_SAMP(income_ratio) FROM nhanes_2017", "stddev-pop-samp",
             aggregates=(("stddev_pop", "income_ratio", None), ("stddev_samp", "income_ratio", None))),
    accepted("SELECT race, AVG(age) AS a, STDDEV(age) AS s FROM nhanes_2017 GROUP BY race HAVING s > 10",
             "stddev-having", having="s > 10"),
    accepted("SELECT sex, STDDEV(hours_per_week) AS s FROM adult_income GROUP BY sex", "stddev-adult",
             aggregates=(("stddev_samp", "hours_per_week", None),)),
    accepted("SELECT sex, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex HAVING n > 100", "having-alias",
             having="n > 100"),
    accepted("SELECT sex, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex HAVING COUNT(*) > 100", "having-aggregate",
             having="n > 100"),
    accepted("SELECT sex, COUNT(*) FROM nhanes_2017 GROUP BY sex HAVING COUNT(*) >= 10", "having-default-name",
             having="count >= 10"),
    accepted("SELECT race, AVG(age) AS a, COUNT(*) AS n FROM nhanes_2017 GROUP BY race "
             "HAVING AVG(age) BETWEEN 20 AND 60 AND NOT race = 'other_or_multi' OR n IS NULL", "having-mixed",
             having="a BETWEEN 20 AND 60 AND NOT race = 'other_or_multi' OR n IS NULL"),
    accepted("SELECT FLOOR(age / 10) * 10 AS decade, SUM(weight_kg) AS w FROM nhanes_2017 GROUP BY decade "
             "HAVING decade >= 20 AND w > 0 ORDER BY w DESC LIMIT 3", "having-bin-key-order-limit",
             having="decade >= 20 AND w > 0"),
    accepted("SELECT COUNT(*) AS n FROM nhanes_2017 HAVING n > 0", "having-without-group", having="n > 0"),
]


@pytest.mark.parametrize(("sql", "code", "granted"), REFUSED)
def test_refused(sql: str, code: str, granted: dict) -> None:
    with pytest.raises(SandboxError) as info:
        analyze(sql, CATALOG, granted)
    assert info.value.code == code, info.value.message
    assert info.value.message


@pytest.mark.parametrize(("sql", "expect"), ACCEPTED)
def test_accepted(sql: str, expect: dict) -> None:
    plan = run(sql)
    if "having" in expect:
        assert plan.having is not None and plan.having.sql(dialect="duckdb") == expect["having"]
        assert "HAVING " + expect["having"] in plan.normalized_sql  # type: ignore[operator]
    if "aggregates" in expect:
        assert tuple((a.kind, a.column, a.q) for a in plan.aggregates) == expect["aggregates"]
    if "columns" in expect:
        assert plan.columns == expect["columns"]


def test_having_normalizes_aggregate_and_alias_alike() -> None:
    a = run("SELECT sex, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex HAVING COUNT(*) > 100")
    b = run("select SEX, count(*) as N from nhanes_2017 group by sex having n > 100")
    assert a.normalized_sql == b.normalized_sql


# -- keys without declared values: a text column (DP partition selection) -----------------------
TEXT_CATALOG = {
    "visits": Dataset(
        id="visits", title="t", source="visits.parquet", classification="L2", privacy_unit="pid",
        max_rows_per_unit=3,
        columns={"pid": {"type": "id"}, "city": {"type": "text"}, "street": {"type": "text"},
                 "ward": {"type": "category", "values": ["a", "b"]}, "cost": {"type": "int", "bounds": [0, 100]},
                 "code": {"type": "int"}},  # an int without bounds: codes, keys only
    )
}
TEXT_GRANTED = {"visits": frozenset({"city", "street", "ward", "cost", "code"})}

TEXT_REFUSED = [
    ("SELECT city, street, COUNT(*) FROM visits GROUP BY city, street", "unbounded_group_keys"),
    ("SELECT FLOOR(city / 10) * 10 AS b, COUNT(*) FROM visits GROUP BY b", "not_numeric"),
    ("SELECT city, MEDIAN(cost) FROM visits GROUP BY city", "unbounded_group_keys"),
    ("SELECT SUM(city) FROM visits", "not_numeric"),
    ("SELECT city FROM visits", "not_aggregate"),
    ("SELECT city, COUNT(*) FROM visits", "not_aggregate"),
    ("SELECT COUNT(*) FROM visits WHERE city > 5", "type_mismatch"),
    ("SELECT COUNT(DISTINCT city) FROM visits", "distinct_not_allowed"),
    ("SELECT code, city, COUNT(*) FROM visits GROUP BY code, city", "unbounded_group_keys"),
    ("SELECT FLOOR(code / 10) * 10 AS b, COUNT(*) FROM visits GROUP BY b", "unbounded_group_keys"),
    ("SELECT SUM(code) FROM visits", "unbounded_column"),
    ("SELECT AVG(code) FROM visits", "unbounded_column"),
    ("SELECT MEDIAN(code) FROM visits", "unbounded_column"),
    ("SELECT STDDEV(code) FROM visits", "unbounded_column"),
    ("SELECT MAX(code) FROM visits", "unbounded_column"),
    ("SELECT code, MEDIAN(cost) FROM visits GROUP BY code", "unbounded_group_keys"),
]
TEXT_ACCEPTED = [
    "SELECT city, COUNT(*) AS n FROM visits GROUP BY city",
    "SELECT city, ward, COUNT(*) AS n, AVG(cost) FROM visits WHERE city <> 'x' GROUP BY city, ward HAVING n > 10",
    "SELECT city, COUNT(DISTINCT pid) AS people FROM visits GROUP BY 1 ORDER BY people DESC LIMIT 5",
    "SELECT COUNT(city) FROM visits WHERE city IN ('a', 'b')",
    "SELECT code, COUNT(*) AS n, AVG(cost) FROM visits WHERE code > 100 GROUP BY code",
    "SELECT code, ward, COUNT(code) FROM visits GROUP BY code, ward",
]


@pytest.mark.parametrize(("sql", "code"), TEXT_REFUSED)
def test_text_keys_refused(sql: str, code: str) -> None:
    with pytest.raises(SandboxError) as info:
        analyze(sql, TEXT_CATALOG, TEXT_GRANTED)
    assert info.value.code == code, info.value.message


@pytest.mark.parametrize("sql", TEXT_ACCEPTED)
def test_text_keys_accepted(sql: str) -> None:
    plan = analyze(sql, TEXT_CATALOG, TEXT_GRANTED)
    opened = [k for k in plan.group_keys if k.open]
    assert plan.open_keys == bool(opened) and all(k.column in ("city", "code") and k.values == () for k in opened)
    assert plan.n_groups == math.prod(len(k.values) for k in plan.group_keys if not k.open)


# -- joins to a public lookup table on its key --------------------------------------------------
JOIN_CATALOG = {
    **TEXT_CATALOG,
    "regions": Dataset(
        id="regions", title="r", source="regions.parquet", classification="L1", privacy_unit="row",
        max_rows_per_unit=1, public=True, key="code",
        columns={"code": {"type": "category", "values": ["a", "b"]}, "name": {"type": "category", "values": ["A", "B"]},
                 "pop": {"type": "int", "bounds": [0, 1000]}, "secret": {"type": "int", "bounds": [0, 9]}},
    ),
}
JOIN_CATALOG["labs"] = Dataset(
    id="labs", title="l", source="labs.parquet", classification="L2", privacy_unit="pid", max_rows_per_unit=5,
    columns={"pid": {"type": "id"}, "test": {"type": "category", "values": ["x", "y"]},
             "value": {"type": "float", "bounds": [0, 10]}},
)
JOIN_CATALOG["people"] = Dataset(
    id="people", title="p", source="people.parquet", classification="L2", privacy_unit="person_id",
    max_rows_per_unit=1, columns={"person_id": {"type": "id"}, "age": {"type": "int", "bounds": [0, 99]}},
)
JOIN_GRANTED = {**TEXT_GRANTED, "regions": frozenset({"code", "name", "pop"}), "labs": frozenset({"test", "value"}),
                "people": frozenset({"age"})}

JOIN_REFUSED = [
    ("SELECT COUNT(*) FROM visits v JOIN regions r ON v.ward = r.name", "join_not_allowed"),  # not the key
    ("SELECT COUNT(*) FROM regions r JOIN visits v ON v.ward = r.code", "join_not_allowed"),  # order
    ("SELECT COUNT(*) FROM visits v JOIN regions r ON v.ward = r.code OR v.cost = 1", "join_not_allowed"),
    ("SELECT COUNT(*) FROM visits v JOIN regions r ON ward = code", "join_not_allowed"),  # unqualified
    ("SELECT COUNT(*) FROM visits v RIGHT JOIN regions r ON v.ward = r.code", "join_not_allowed"),
    ("SELECT COUNT(*) FROM visits v NATURAL JOIN regions r", "join_not_allowed"),
    ("SELECT COUNT(*) FROM visits v ASOF JOIN regions r ON v.ward = r.code", "join_not_allowed"),
    ("SELECT COUNT(*) FROM visits v JOIN visits w ON v.ward = w.ward", "join_not_allowed"),
    ("SELECT COUNT(*) FROM visits v JOIN visits w ON v.pid = w.pid", "join_not_allowed"),  # a self-join
    ("SELECT COUNT(*) FROM visits v JOIN labs l ON v.ward = l.test", "join_not_allowed"),  # not on the unit
    ("SELECT COUNT(*) FROM visits v JOIN people p ON v.pid = p.person_id", "join_not_allowed"),  # other unit
    ("SELECT l.pid, COUNT(*) FROM visits v JOIN labs l ON v.pid = l.pid GROUP BY l.pid", "unknown_column"),
    ("SELECT COUNT(*) FROM visits v JOIN labs l ON v.pid = l.pid WHERE l.pid = 'x'", "unknown_column"),
    ("SELECT SUM(r.secret) FROM visits v JOIN regions r ON v.ward = r.code", "column_not_granted"),
    ("SELECT COUNT(*) FROM visits v JOIN regions r ON v.pid = r.code", "column_not_granted"),
    ("SELECT COUNT(*) FROM visits v JOIN nowhere r ON v.ward = r.code", "unknown_dataset"),
    ("SELECT r.code, COUNT(*) FROM visits v JOIN regions r ON v.ward = r.code", "not_aggregate"),
    ("SELECT x.name, COUNT(*) FROM visits v JOIN regions r ON v.ward = r.code GROUP BY x.name", "unknown_column"),
]
JOIN_ACCEPTED = [
    ("SELECT l.test, AVG(l.value), COUNT(DISTINCT pid) FROM visits v JOIN labs l ON v.pid = l.pid GROUP BY l.test",
     "SELECT labs__test, AVG(labs__value), COUNT(DISTINCT pid) FROM visits JOIN labs ON visits.pid = labs.pid "
     "GROUP BY labs__test"),
    ("SELECT r.name, COUNT(*) FROM visits v JOIN regions r ON v.ward = r.code GROUP BY r.name",
     "SELECT regions__name, COUNT(*) FROM visits JOIN regions ON visits.ward = regions.code GROUP BY regions__name"),
    ("SELECT name AS region, AVG(pop) FROM visits AS v LEFT JOIN regions AS r ON (v.ward = r.code) GROUP BY 1",
     "SELECT regions__name AS region, AVG(regions__pop) FROM visits LEFT JOIN regions ON visits.ward = regions.code "
     "GROUP BY 1"),
    ("SELECT COUNT(DISTINCT v.pid) FROM visits v INNER JOIN regions r ON r.code = v.ward WHERE r.pop > 10",
     "SELECT COUNT(DISTINCT pid) FROM visits JOIN regions ON visits.ward = regions.code WHERE regions__pop > 10"),
]


@pytest.mark.parametrize(("sql", "code"), JOIN_REFUSED)
def test_joins_refused(sql: str, code: str) -> None:
    with pytest.raises(SandboxError) as info:
        analyze(sql, JOIN_CATALOG, JOIN_GRANTED)
    assert info.value.code == code, info.value.message


@pytest.mark.parametrize(("sql", "normalized"), JOIN_ACCEPTED)
def test_joins_accepted(sql: str, normalized: str) -> None:
    plan = analyze(sql, JOIN_CATALOG, JOIN_GRANTED)
    assert plan.join is not None and (plan.join.lookup, plan.join.key, plan.join.unit) in (
        ("regions", "code", False), ("labs", "pid", True))
    assert plan.normalized_sql == normalized
