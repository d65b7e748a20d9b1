"""Golden tables for the SQL analyser: what is refused (with which code) and what is accepted.

Real sqlglot, the real catalog under ``policies/`` and the demo grant g-2026-001, which
grants nhanes_2017 {sex, age, race, education, general_health, income_ratio, weight_kg,
height_cm} and adult_income {age, sex, education, occupation, hours_per_week, income}.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox.errors import BadRequest, Forbidden, SandboxError
from sandbox.policy.loader import load_policies
from sandbox.sql.analyze import analyze
from sandbox.sql.plan import QueryPlan

POLICIES = Path(__file__).resolve().parents[2] / "policies"
_POLICIES = load_policies(POLICIES)
CATALOG = _POLICIES.datasets
GRANTED = {ds: frozenset(g.columns) for ds, g in _POLICIES.grants["g-2026-001"].datasets.items()}
NHANES_ONLY = {"nhanes_2017": GRANTED["nhanes_2017"]}
FORBIDDEN_CODES = {"dataset_not_granted", "column_not_granted"}

ZWSP = "\u200b"  # zero-width space
CYRILLIC_A = "\u0430"
KELVIN = "\u212a"  # folds to ASCII 'k' under str.lower(); must not match weight_kg
FULLWIDTH_SEMICOLON = "\uff1b"


def run(sql: str, granted: dict = GRANTED) -> QueryPlan:  # noqa: B006 - read-only default
    return analyze(sql, CATALOG, granted)


def refused(sql: str, code: str, name: str, granted: dict | None = None) -> object:
    return pytest.param(sql, code, granted or GRANTED, id=name)


REFUSED = [
    # raw rows, stars, constants, missing aggregates
    refused("SELECT age FROM nhanes_2017", "not_aggregate", "raw-column"),
    refused("SELECT * FROM nhanes_2017", "not_aggregate", "star"),
    refused("SELECT * EXCLUDE (seqn) FROM nhanes_2017", "not_aggregate", "star-exclude"),
    refused("SELECT n.*, COUNT(*) FROM nhanes_2017 AS n", "not_aggregate", "qualified-star"),
    refused("FROM nhanes_2017", "not_aggregate", "from-only"),
    refused("SELECT 1 FROM nhanes_2017", "not_aggregate", "literal-only"),
    refused("SELECT sex, COUNT(*) FROM nhanes_2017", "not_aggregate", "column-not-grouped"),
    refused("SELECT sex FROM nhanes_2017 GROUP BY sex", "not_aggregate", "no-aggregate"),
    # files and table functions
    refused("SELECT COUNT(*) FROM read_parquet('x.parquet')", "unsupported_function", "read-parquet"),
    refused("SELECT COUNT(*) FROM 'file.parquet'", "unknown_dataset", "string-table"),
    refused('SELECT COUNT(*) FROM "/data/nhanes_2017.parquet"', "unknown_dataset", "quoted-path"),
    refused("SELECT COUNT(*) FROM read_csv_auto('/etc/passwd')", "unsupported_function", "read-csv"),
    refused("SELECT COUNT(*) FROM glob('*')", "unsupported_function", "glob"),
    # statements that are not SELECT
    refused("COPY nhanes_2017 TO 'out.csv'", "not_select", "copy"),
    refused("COPY (SELECT * FROM nhanes_2017) TO 'out.csv'", "not_select", "copy-query"),
    refused("ATTACH 'other.db' AS o", "not_select", "attach"),
    refused("DETACH o", "not_select", "detach"),
    refused("INSTALL httpfs", "not_select", "install"),
    refused("LOAD httpfs", "not_select", "load"),
    refused("PRAGMA database_list", "not_select", "pragma"),
    refused("SET enable_external_access = true", "not_select", "set"),
    refused("CREATE TABLE t AS SELECT * FROM nhanes_2017", "not_select", "create"),
    refused("INSERT INTO nhanes_2017 VALUES (1)", "not_select", "insert"),
    refused("UPDATE nhanes_2017 SET age = 1", "not_select", "update"),
    refused("DELETE FROM nhanes_2017", "not_select", "delete"),
    refused("DROP TABLE nhanes_2017", "not_select", "drop"),
    refused("DESCRIBE nhanes_2017", "not_select", "describe"),
    refused("SHOW TABLES", "not_select", "show"),
    refused("SUMMARIZE nhanes_2017", "not_select", "summarize"),
    refused("USE other", "not_select", "use"),
    refused("CALL pragma_version()", "not_select", "call"),
    refused("EXPLAIN SELECT COUNT(*) FROM nhanes_2017", "not_select", "explain"),
    refused("EXPORT DATABASE 'dump'", "parse_error", "export-unparsable"),
    # several statements, comments hiding statements
    refused(
        "SELECT COUNT(*) FROM nhanes_2017; SELECT COUNT(*) FROM adult_income",
        "multiple_statements",
        "two-selects",
    ),
    refused("SELECT COUNT(*) FROM nhanes_2017; DROP TABLE nhanes_2017", "multiple_statements", "then-drop"),
    refused(
        "SELECT COUNT(*) FROM nhanes_2017; -- harmless\n DROP TABLE nhanes_2017",
        "multiple_statements",
        "line-comment-hides-drop",
    ),
    refused(
        "SELECT COUNT(*) FROM nhanes_2017 /* */; /* */ COPY nhanes_2017 TO 'x.csv'",
        "multiple_statements",
        "block-comments-around-copy",
    ),
    refused(
        "SELECT COUNT(*) /* ; */ FROM nhanes_2017 -- ;\n; ATTACH 'x.db'",
        "multiple_statements",
        "semicolons-in-comments",
    ),
    # subqueries and CTEs
    refused("SELECT COUNT(*) FROM (SELECT * FROM nhanes_2017)", "subquery_not_allowed", "subquery-from"),
    refused(
        "SELECT COUNT(*) FROM nhanes_2017 WHERE age IN (SELECT age FROM nhanes_2017 WHERE seqn = 1)",
        "subquery_not_allowed",
        "subquery-in",
    ),
    refused(
        "SELECT (SELECT MAX(age) FROM nhanes_2017), COUNT(*) FROM nhanes_2017",
        "subquery_not_allowed",
        "scalar-subquery",
    ),
    refused(
        "SELECT COUNT(*) FROM nhanes_2017 WHERE EXISTS (SELECT 1 FROM nhanes_2017 WHERE seqn = 1)",
        "subquery_not_allowed",
        "exists",
    ),
    refused("(SELECT COUNT(*) FROM nhanes_2017)", "subquery_not_allowed", "parenthesised"),
    refused(
        "WITH t AS (SELECT seqn, age FROM nhanes_2017) SELECT COUNT(*) FROM t",
        "unsupported_clause",
        "cte",
    ),
    # windows
    refused("SELECT COUNT(*) OVER () FROM nhanes_2017", "window_not_allowed", "count-over"),
    refused(
        "SELECT sex, SUM(age) OVER (PARTITION BY sex) FROM nhanes_2017",
        "window_not_allowed",
        "sum-over-partition",
    ),
    refused("SELECT ROW_NUMBER() OVER (ORDER BY age) FROM nhanes_2017", "window_not_allowed", "row-number"),
    # functions that reveal rows or system state
    refused("SELECT MIN(sex) FROM nhanes_2017", "not_numeric", "min-category"),
    refused("SELECT MAX(weight_kg + 1) FROM nhanes_2017", "unsupported_expression", "max-expression"),
    refused("SELECT LIST(age) FROM nhanes_2017", "unsupported_function", "list"),
    refused("SELECT STRING_AGG(sex, ',') FROM nhanes_2017", "unsupported_function", "string-agg"),
    refused("SELECT ARRAY_AGG(age) FROM nhanes_2017", "unsupported_function", "array-agg"),
    refused("SELECT FIRST(age) FROM nhanes_2017", "unsupported_function", "first"),
    refused("SELECT ANY_VALUE(age) FROM nhanes_2017", "unsupported_function", "any-value"),
    refused("SELECT ARG_MAX(age, weight_kg) FROM nhanes_2017", "unsupported_function", "arg-max"),
    refused("SELECT MEDIAN(education) FROM nhanes_2017", "not_numeric", "median-category"),
    refused("SELECT QUANTILE_CONT(age, 1.5) FROM nhanes_2017", "unsupported_expression", "quantile-out-of-range"),
    refused("SELECT STDDEV(sex) FROM nhanes_2017", "not_numeric", "stddev-category"),
    refused("SELECT getenv('HOME'), COUNT(*) FROM nhanes_2017", "unsupported_function", "getenv"),
    refused("SELECT current_setting('enable_external_access')", "unsupported_function", "current-setting"),
    refused(
        "SELECT COUNT(*) FROM nhanes_2017 WHERE getenv('USER') = 'root'",
        "unsupported_function",
        "getenv-in-where",
    ),
    refused("SELECT COUNT(*) FROM nhanes_2017 WHERE lower(sex) = 'male'", "unsupported_function", "where-func"),
    refused(
        "SELECT COUNT(*) FROM nhanes_2017 WHERE CAST(age AS VARCHAR) = '1'",
        "unsupported_function",
        "where-cast",
    ),
    refused("SELECT COUNT(*) FROM nhanes_2017 WHERE COUNT(*) > 1", "unsupported_function", "aggregate-in-where"),
    # the privacy-unit column
    refused("SELECT seqn, COUNT(*) FROM nhanes_2017 GROUP BY seqn", "id_column", "group-by-id"),
    refused("SELECT COUNT(*) FROM nhanes_2017 WHERE seqn = 93703", "id_column", "filter-on-id"),
    refused("SELECT COUNT(seqn) FROM nhanes_2017", "id_column", "count-id"),
    refused("SELECT SUM(seqn) FROM nhanes_2017", "id_column", "sum-id"),
    # system catalogs and qualified names
    refused("SELECT COUNT(*) FROM information_schema.tables", "unknown_dataset", "information-schema"),
    refused("SELECT COUNT(*) FROM duckdb_settings()", "unsupported_function", "duckdb-settings"),
    refused("SELECT COUNT(*) FROM duckdb_tables()", "unsupported_function", "duckdb-tables"),
    refused("SELECT COUNT(*) FROM pg_catalog.pg_class", "unknown_dataset", "pg-catalog"),
    refused("SELECT COUNT(*) FROM sqlite_master", "unknown_dataset", "sqlite-master"),
    refused("SELECT COUNT(*) FROM main.nhanes_2017", "unknown_dataset", "schema-qualified"),
    refused("SELECT COUNT(*) FROM memory.main.nhanes_2017", "unknown_dataset", "catalog-qualified"),
    # unicode tricks
    refused(
        f"SELECT COUNT(*) FROM nhanes_2017{FULLWIDTH_SEMICOLON}DROP TABLE nhanes_2017",
        "parse_error",
        "fullwidth-semicolon",
    ),
    refused(f"SELECT COUNT(*) FROM nhanes_2017{FULLWIDTH_SEMICOLON}", "unknown_dataset", "fullwidth-semicolon-end"),
    refused(f"SELECT COUNT(*) FROM nhanes_2017 WHERE {CYRILLIC_A}ge > 1", "unknown_column", "cyrillic-column"),
    refused(f"SELECT COUNT(*) FROM nh{CYRILLIC_A}nes_2017", "unknown_dataset", "cyrillic-dataset"),
    refused(f"SELECT COUNT(*) FROM nhanes_2017 WHERE we{ZWSP}ight_kg > 1", "unknown_column", "zero-width-space"),
    refused(f"SELECT SUM(weight_{KELVIN}g) FROM nhanes_2017", "unknown_column", "kelvin-sign"),
    refused("\uff33\uff25\uff2c\uff25\uff23\uff34 COUNT(*) FROM nhanes_2017", "parse_error", "fullwidth-select"),
    # joins, set operations, DISTINCT, HAVING and other clauses
    refused(
        "SELECT COUNT(*) FROM nhanes_2017 n JOIN adult_income a ON n.age = a.age",
        "join_not_allowed",
        "join",
    ),
    refused("SELECT COUNT(*) FROM nhanes_2017, adult_income", "join_not_allowed", "comma-join"),
    refused("SELECT COUNT(*) FROM nhanes_2017, LATERAL (SELECT 1)", "join_not_allowed", "lateral"),
    refused(
        "SELECT COUNT(*) FROM nhanes_2017 UNION SELECT COUNT(*) FROM adult_income",
        "unsupported_clause",
        "union",
    ),
    refused(
        "SELECT COUNT(*) FROM nhanes_2017 EXCEPT SELECT COUNT(*) FROM adult_income",
        "unsupported_clause",
        "except",
    ),
    refused("SELECT DISTINCT sex, COUNT(*) FROM nhanes_2017 GROUP BY sex", "distinct_not_allowed", "select-distinct"),
    refused("SELECT COUNT(DISTINCT age) FROM nhanes_2017", "distinct_not_allowed", "count-distinct"),
    refused("SELECT COUNT(*) FROM nhanes_2017 QUALIFY 1 = 1", "unsupported_clause", "qualify"),
    refused("SELECT COUNT(*) FROM nhanes_2017 LIMIT 5 OFFSET 10", "unsupported_clause", "offset"),
    refused("SELECT COUNT(*) FROM nhanes_2017 USING SAMPLE 10 PERCENT (bernoulli)", "unsupported_clause", "sample"),
    refused("SELECT COUNT(*) FROM nhanes_2017 TABLESAMPLE (10 PERCENT)", "unsupported_clause", "tablesample"),
    refused(
        "SELECT COUNT(*) FROM nhanes_2017 PIVOT (SUM(age) FOR sex IN ('male'))",
        "unsupported_clause",
        "pivot",
    ),
    refused("SELECT COUNT(*) FILTER (WHERE age > 1) FROM nhanes_2017", "unsupported_clause", "agg-filter"),
    refused("SELECT COUNT(*) FROM nhanes_2017 GROUP BY ALL", "unsupported_clause", "group-by-all"),
    refused("SELECT COUNT(*) FROM nhanes_2017 FETCH FIRST 5 ROWS ONLY", "unsupported_clause", "fetch"),
    refused("SELECT COUNT(*) INTO t FROM nhanes_2017", "unsupported_clause", "select-into"),
    refused("SELECT COUNT(*) FROM UNNEST([1, 2, 3])", "unsupported_clause", "unnest"),
    refused("SELECT COUNT(*) FROM (VALUES (1), (2))", "unsupported_clause", "values"),
    # GROUP BY keys without a public, bounded domain
    refused("SELECT weight_kg, COUNT(*) FROM nhanes_2017 GROUP BY weight_kg", "unbounded_group_keys", "float-key"),
    refused(
        "SELECT upper(sex), COUNT(*) FROM nhanes_2017 GROUP BY upper(sex)",
        "unbounded_group_keys",
        "string-function-key",
    ),
    refused("SELECT COUNT(*) FROM nhanes_2017 GROUP BY sex || 'x'", "unbounded_group_keys", "concat-key"),
    refused(
        "SELECT FLOOR(age / 10) * 5, COUNT(*) FROM nhanes_2017 GROUP BY 1",
        "unbounded_group_keys",
        "bin-widths-differ",
    ),
    refused(
        "SELECT COUNT(*) FROM nhanes_2017 GROUP BY FLOOR(age / -10) * -10",
        "unbounded_group_keys",
        "bin-negative-width",
    ),
    refused("SELECT sex, COUNT(*) FROM nhanes_2017 GROUP BY ROLLUP (sex)", "unbounded_group_keys", "rollup"),
    refused("SELECT age, COUNT(*) FROM nhanes_2017 GROUP BY 2", "unbounded_group_keys", "group-by-aggregate"),
    refused(
        "SELECT age, hours_per_week, sex, COUNT(*) FROM adult_income GROUP BY 1, 2, 3",
        "too_many_groups",
        "too-many-groups",
    ),
    refused(
        "SELECT FLOOR(weight_kg / 0.01) * 0.01 AS w, COUNT(*) FROM nhanes_2017 GROUP BY w",
        "too_many_groups",
        "bins-too-narrow",
    ),
    refused("SELECT COUNT(*) FROM nhanes_2017 GROUP BY sex", "group_key_not_selected", "key-not-selected"),
    # aggregates of the wrong shape or type
    refused("SELECT SUM(sex) FROM nhanes_2017", "not_numeric", "sum-category"),
    refused("SELECT AVG(income) FROM adult_income", "not_numeric", "avg-category"),
    refused("SELECT FLOOR(sex / 1) * 1 AS b, COUNT(*) FROM nhanes_2017 GROUP BY b", "not_numeric", "bin-category"),
    refused("SELECT SUM(weight_kg) / COUNT(*) FROM nhanes_2017", "unsupported_expression", "sum-over-count"),
    refused("SELECT SUM(age) + 1 FROM nhanes_2017", "unsupported_expression", "aggregate-plus-one"),
    refused("SELECT SUM(age + 1) FROM nhanes_2017", "unsupported_expression", "sum-of-expression"),
    refused("SELECT COUNT(1) FROM nhanes_2017", "unsupported_expression", "count-one"),
    # grants (403) and unknown names (400)
    refused(
        "SELECT COUNT(*) FROM nhanes_2017 WHERE marital_status = 'married'",
        "column_not_granted",
        "filter-not-granted",
    ),
    refused("SELECT SUM(total_cholesterol) FROM nhanes_2017", "column_not_granted", "sum-not-granted"),
    refused(
        "SELECT marital_status, COUNT(*) FROM nhanes_2017 GROUP BY marital_status",
        "column_not_granted",
        "group-not-granted",
    ),
    refused("SELECT COUNT(workclass) FROM adult_income", "column_not_granted", "adult-not-granted"),
    refused("SELECT COUNT(*) FROM adult_income", "dataset_not_granted", "dataset-not-granted", NHANES_ONLY),
    refused("SELECT COUNT(*) FROM census_2020", "unknown_dataset", "unknown-dataset"),
    refused('SELECT COUNT(*) FROM "NHANES_2017"', "unknown_dataset", "quoted-dataset-case"),
    refused("SELECT SUM(salary) FROM adult_income", "unknown_column", "unknown-column"),
    refused('SELECT COUNT(*) FROM nhanes_2017 WHERE "AGE" > 1', "unknown_column", "quoted-column-case"),
    refused("SELECT COUNT(*) FROM nhanes_2017 WHERE sex = male", "unknown_column", "unquoted-value"),
    refused("SELECT COUNT(*) FROM nhanes_2017 AS n WHERE x.age > 1", "unknown_column", "wrong-qualifier"),
    refused("SELECT COUNT(*) FROM nhanes_2017 WHERE main.nhanes_2017.age > 1", "unknown_column", "db-qualifier"),
    # WHERE, ORDER BY, LIMIT, names, empty and broken input
    refused("SELECT COUNT(*) FROM nhanes_2017 WHERE sex LIKE 'm%'", "unsupported_expression", "like"),
    refused("SELECT COUNT(*) FROM nhanes_2017 WHERE age = $1", "unsupported_expression", "parameter"),
    refused("SELECT COUNT(*) FROM nhanes_2017 WHERE age IN (1, age)", "unsupported_expression", "in-non-literal"),
    refused("SELECT COUNT(*) FROM nhanes_2017 WHERE age IS TRUE", "unsupported_expression", "is-true"),
    refused("SELECT COUNT(*) FROM nhanes_2017 WHERE sex = 1", "type_mismatch", "category-vs-number"),
    refused("SELECT COUNT(*) FROM nhanes_2017 WHERE age", "type_mismatch", "where-not-condition"),
    refused("SELECT COUNT(*) FROM nhanes_2017 ORDER BY COUNT(*) DESC", "unsupported_expression", "order-by-agg"),
    refused("SELECT COUNT(*) FROM nhanes_2017 ORDER BY age", "unknown_column", "order-by-non-output"),
    refused("SELECT COUNT(*) FROM nhanes_2017 LIMIT -1", "unsupported_expression", "negative-limit"),
    refused("SELECT COUNT(*) FROM nhanes_2017 LIMIT 1.5", "unsupported_expression", "fractional-limit"),
    refused("SELECT COUNT(*), COUNT(*) FROM nhanes_2017", "duplicate_column_name", "duplicate-count"),
    refused("SELECT sex, COUNT(*) AS sex FROM nhanes_2017 GROUP BY 1", "duplicate_column_name", "alias-collides"),
    refused('SELECT COUNT(*) AS "Row Count" FROM nhanes_2017', "unsupported_expression", "bad-alias"),
    refused("", "empty_query", "empty"),
    refused("   \n\t ", "empty_query", "blank"),
    refused("-- only a comment", "empty_query", "comment-only"),
    refused(";", "empty_query", "semicolon-only"),
    refused("SELECT COUNT(* FROM nhanes_2017", "parse_error", "unbalanced"),
    refused("SELECT COUNT(*) FROM nhanes_2017 WHERE sex = 'male", "parse_error", "unterminated-string"),
    refused("SELEC COUNT(*) FROM nhanes_2017", "parse_error", "typo"),
    refused(
        "SELECT COUNT(*) FROM nhanes_2017 WHERE " + " + ".join(["age"] * 1500) + " > 1",
        "parse_error",
        "too-deep",
    ),
    refused("SELECT COUNT(*) FROM nhanes_2017 " + " " * 10_000, "sql_too_long", "too-long"),
]


@pytest.mark.parametrize(("sql", "code", "granted"), REFUSED)
def test_refused(sql: str, code: str, granted: dict) -> None:
    with pytest.raises(SandboxError) as info:
        run(sql, granted)
    err = info.value
    assert err.code == code, err.message
    expected = Forbidden if code in FORBIDDEN_CODES else BadRequest
    assert type(err) is expected
    assert err.status == (403 if code in FORBIDDEN_CODES else 400)
    assert err.message and len(err.message) < 700
    assert "Traceback" not in err.message and "\x1b" not in err.message


def test_golden_table_is_large_enough() -> None:
    assert len(REFUSED) >= 60
    assert len(ACCEPTED) >= 30


@pytest.mark.parametrize(
    ("sql", "words"),
    [
        ("SELECT QUANTILE_DISC(age, 0.5) FROM nhanes_2017", ["PERCENTILE_DISC", "MEDIAN(col)", "QUANTILE_CONT"]),
        ("SELECT SUM(x) FROM nhanes_2017", ["Granted columns", "weight_kg"]),
        ("SELECT SUM(weight_kg) / COUNT(*) FROM nhanes_2017", ["client-side"]),
        ("SELECT weight_kg, COUNT(*) FROM nhanes_2017 GROUP BY 1", ["FLOOR(weight_kg / 10) * 10"]),
        ("SELECT COUNT(*) FROM nhanes_2017 WHERE sex = male", ["'male'"]),
        ('SELECT COUNT(*) FROM "NHANES_2017"', ["write nhanes_2017"]),
        ("SELECT COUNT(*) FROM nhanes_2017 LIMIT 5 OFFSET 10", ["LIMIT n"]),
        (f"SELECT COUNT(*) FROM nh{CYRILLIC_A}nes_2017", ["\\u0430"]),
        ("SELECT SUM(sex) FROM nhanes_2017", ["GROUP BY sex"]),
        ("SELECT COUNT(*) FROM nhanes_2017 ORDER BY COUNT(*) DESC", ["AS n", "ORDER BY n DESC"]),
    ],
)
def test_messages_say_what_would_work(sql: str, words: list[str]) -> None:
    with pytest.raises(SandboxError) as info:
        run(sql)
    for word in words:
        assert word in info.value.message


@dataclass(frozen=True)
class Expect:
    """The parts of a plan a golden case pins down."""

    columns: tuple[str, ...]
    aggregates: tuple[tuple[str, str | None], ...]  # (kind, column)
    keys: tuple[tuple[str, float | int | None, int], ...] = ()  # (column, bin width, domain size)
    where: str | None = None
    order: tuple[tuple[str, bool], ...] = ()  # (name, descending)
    limit: int | None = None
    dataset: str = "nhanes_2017"


COUNT = (("count", None),)

ACCEPTED = [
    pytest.param("SELECT COUNT(*) FROM nhanes_2017", Expect(("count",), COUNT), id="count-star"),
    pytest.param("select count(*) from NHANES_2017", Expect(("count",), COUNT), id="lower-case"),
    pytest.param("SELECT COUNT(*) FROM nhanes_2017;", Expect(("count",), COUNT), id="trailing-semicolon"),
    pytest.param("FROM nhanes_2017 SELECT COUNT(*)", Expect(("count",), COUNT), id="from-first"),
    pytest.param("SELECT COUNT(*) AS n FROM nhanes_2017", Expect(("n",), COUNT), id="alias"),
    pytest.param(
        "SELECT sex, COUNT(*) FROM nhanes_2017 GROUP BY sex",
        Expect(("sex", "count"), COUNT, (("sex", None, 2),)),
        id="group-category",
    ),
    pytest.param(
        "SELECT sex AS gender, COUNT(*) AS n FROM nhanes_2017 GROUP BY gender",
        Expect(("gender", "n"), COUNT, (("sex", None, 2),)),
        id="group-by-alias",
    ),
    pytest.param(
        "SELECT race, sex, COUNT(*), AVG(age) FROM nhanes_2017 GROUP BY 1, 2",
        Expect(
            ("race", "sex", "count", "avg_age"),
            (("count", None), ("avg", "age")),
            (("race", None, 5), ("sex", None, 2)),
        ),
        id="group-by-positions",
    ),
    pytest.param(
        "SELECT COUNT(*), sex FROM nhanes_2017 GROUP BY sex",
        Expect(("count", "sex"), COUNT, (("sex", None, 2),)),
        id="key-after-aggregate",
    ),
    pytest.param(
        "SELECT sex, COUNT(*) FROM nhanes_2017 GROUP BY (sex)",
        Expect(("sex", "count"), COUNT, (("sex", None, 2),)),
        id="group-by-parenthesised",
    ),
    pytest.param(
        "SELECT age, COUNT(*) FROM adult_income GROUP BY age",
        Expect(("age", "count"), COUNT, (("age", None, 74),), dataset="adult_income"),
        id="group-int-range",
    ),
    pytest.param(
        "SELECT FLOOR(age / 10) * 10 AS decade, COUNT(*) AS n FROM nhanes_2017 GROUP BY decade ORDER BY n DESC LIMIT 3",
        Expect(("decade", "n"), COUNT, (("age", 10, 9),), order=(("n", True),), limit=3),
        id="bin-order-desc-limit",
    ),
    pytest.param(
        "SELECT FLOOR(age / 10) * 10, COUNT(*) FROM nhanes_2017 GROUP BY FLOOR(age / 10) * 10",
        Expect(("age_bin", "count"), COUNT, (("age", 10, 9),)),
        id="bin-repeated-expression",
    ),
    pytest.param(
        "SELECT FLOOR(income_ratio / 0.5) * 0.5 AS band, AVG(weight_kg) FROM nhanes_2017 GROUP BY 1",
        Expect(("band", "avg_weight_kg"), (("avg", "weight_kg"),), (("income_ratio", 0.5, 11),)),
        id="bin-float",
    ),
    pytest.param(
        "SELECT FLOOR(weight_kg / 10) * 10 AS w, COUNT(*) FROM nhanes_2017 GROUP BY w",
        Expect(("w", "count"), COUNT, (("weight_kg", 10, 26),)),
        id="bin-float-column-whole-width",
    ),
    pytest.param(
        "SELECT FLOOR(age / 2.5) * 2.5 AS b, COUNT(*) FROM nhanes_2017 GROUP BY b",
        Expect(("b", "count"), COUNT, (("age", 2.5, 33),)),
        id="bin-int-column-fractional-width",
    ),
    pytest.param(
        "SELECT sex, FLOOR(age / 20) * 20 AS age_band, COUNT(*), SUM(income_ratio) FROM nhanes_2017 "
        "GROUP BY sex, age_band",
        Expect(
            ("sex", "age_band", "count", "sum_income_ratio"),
            (("count", None), ("sum", "income_ratio")),
            (("sex", None, 2), ("age", 20, 5)),
        ),
        id="key-and-bin",
    ),
    pytest.param(
        "SELECT COUNT(education) FROM nhanes_2017",
        Expect(("count_education",), (("count", "education"),)),
        id="count-column",
    ),
    pytest.param(
        "SELECT SUM(hours_per_week), AVG(age), COUNT(occupation) FROM adult_income",
        Expect(
            ("sum_hours_per_week", "avg_age", "count_occupation"),
            (("sum", "hours_per_week"), ("avg", "age"), ("count", "occupation")),
            dataset="adult_income",
        ),
        id="default-names",
    ),
    pytest.param(
        "SELECT COUNT(*) FROM nhanes_2017 WHERE race IN ('mexican_american', 'other_hispanic')",
        Expect(("count",), COUNT, where="race IN ('mexican_american', 'other_hispanic')"),
        id="where-in",
    ),
    pytest.param(
        "SELECT COUNT(*) FROM nhanes_2017 WHERE age BETWEEN 18 AND 65",
        Expect(("count",), COUNT, where="age BETWEEN 18 AND 65"),
        id="where-between",
    ),
    pytest.param(
        "SELECT COUNT(*) FROM nhanes_2017 WHERE education IS NULL",
        Expect(("count",), COUNT, where="education IS NULL"),
        id="where-is-null",
    ),
    pytest.param(
        "SELECT COUNT(*) FROM nhanes_2017 WHERE education IS NOT NULL AND age >= 20",
        Expect(("count",), COUNT, where="NOT education IS NULL AND age >= 20"),
        id="where-is-not-null",
    ),
    pytest.param(
        "SELECT COUNT(*) FROM nhanes_2017 WHERE weight_kg / ((height_cm / 100) * (height_cm / 100)) >= 30",
        Expect(("count",), COUNT, where="weight_kg / ((height_cm / 100) * (height_cm / 100)) >= 30"),
        id="where-arithmetic",
    ),
    pytest.param(
        "SELECT COUNT(*) FROM nhanes_2017 WHERE NOT (sex = 'male') OR age <> 40 AND age != 41",
        Expect(("count",), COUNT, where="NOT (sex = 'male') OR age <> 40 AND age <> 41"),
        id="where-not-or",
    ),
    pytest.param(
        "SELECT COUNT(*) FROM nhanes_2017 WHERE income_ratio > -1 AND age NOT IN (1, 2) AND race IS NOT NULL",
        Expect(("count",), COUNT, where="income_ratio > -1 AND NOT age IN (1, 2) AND NOT race IS NULL"),
        id="where-negative-not-in",
    ),
    pytest.param(
        "SELECT COUNT(*) FROM nhanes_2017 WHERE sex = 'm\u00e4le'",
        Expect(("count",), COUNT, where="sex = 'm\u00e4le'"),
        id="unicode-string-literal",
    ),
    pytest.param(
        "SELECT n.sex, COUNT(n.age) FROM nhanes_2017 AS n WHERE n.age >= 18 GROUP BY n.sex",
        Expect(("sex", "count_age"), (("count", "age"),), (("sex", None, 2),), where="age >= 18"),
        id="table-alias-qualified",
    ),
    pytest.param(
        "SELECT nhanes_2017.sex, COUNT(*) FROM nhanes_2017 WHERE nhanes_2017.age > 1 GROUP BY nhanes_2017.sex",
        Expect(("sex", "count"), COUNT, (("sex", None, 2),), where="age > 1"),
        id="dataset-qualified",
    ),
    pytest.param(
        "SeLeCt SEX, cOuNt(*) FrOm Nhanes_2017 wHeRe AGE > 1 gRoUp By Sex",
        Expect(("sex", "count"), COUNT, (("sex", None, 2),), where="age > 1"),
        id="mixed-case",
    ),
    pytest.param(
        '/* header */ SELECT sex, COUNT(*) -- count\nFROM "nhanes_2017" /* from */ GROUP BY "sex";',
        Expect(("sex", "count"), COUNT, (("sex", None, 2),)),
        id="comments-and-quotes",
    ),
    pytest.param(
        "SELECT COUNT(*) FROM nhanes_2017 /* ; DROP TABLE nhanes_2017; */",
        Expect(("count",), COUNT),
        id="statement-inside-comment",
    ),
    pytest.param(
        "SELECT education, COUNT(*) FROM adult_income GROUP BY education ORDER BY 2 DESC LIMIT 5",
        Expect(
            ("education", "count"),
            COUNT,
            (("education", None, 16),),
            order=(("count", True),),
            limit=5,
            dataset="adult_income",
        ),
        id="order-by-position",
    ),
    pytest.param(
        "SELECT sex, race, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex, race ORDER BY sex, n DESC LIMIT 0",
        Expect(
            ("sex", "race", "n"),
            COUNT,
            (("sex", None, 2), ("race", None, 5)),
            order=(("sex", False), ("n", True)),
            limit=0,
        ),
        id="order-by-several",
    ),
    pytest.param(
        "SELECT income, COUNT(*) FROM adult_income WHERE income = '>50K' AND sex = 'Female' GROUP BY income",
        Expect(
            ("income", "count"),
            COUNT,
            (("income", None, 2),),
            where="income = '>50K' AND sex = 'Female'",
            dataset="adult_income",
        ),
        id="adult-categories",
    ),
    pytest.param(
        "SELECT age, hours_per_week, COUNT(*) FROM adult_income GROUP BY 1, 2",
        Expect(
            ("age", "hours_per_week", "count"),
            COUNT,
            (("age", None, 74), ("hours_per_week", None, 99)),
            dataset="adult_income",
        ),
        id="two-int-keys-under-cap",
    ),
]


@pytest.mark.parametrize(("sql", "expect"), ACCEPTED)
def test_accepted(sql: str, expect: Expect) -> None:
    plan = run(sql)
    assert plan.dataset == expect.dataset
    assert plan.columns == expect.columns
    assert tuple((a.kind, a.column) for a in plan.aggregates) == expect.aggregates
    assert tuple((k.column, k.bin_width, len(k.values)) for k in plan.group_keys) == expect.keys
    assert (plan.where.sql(dialect="duckdb") if plan.where is not None else None) == expect.where
    assert tuple((o.name, o.descending) for o in plan.order_by) == expect.order
    assert plan.limit == expect.limit
    assert plan.normalized_sql


EQUIVALENT = [
    pytest.param(
        [
            "SELECT sex, COUNT(*) FROM nhanes_2017 GROUP BY sex",
            "select SEX ,count( * )\n  from\tNHANES_2017   group by Sex",
            "/* a */ SELECT sex, COUNT(*) -- c\n FROM nhanes_2017 GROUP BY sex;",
            "SELECT n.sex, COUNT(*) FROM nhanes_2017 AS n GROUP BY n.sex",
            'SELECT "sex", COUNT(*) FROM "nhanes_2017" GROUP BY "sex"',
            "FROM nhanes_2017 SELECT sex, COUNT(*) GROUP BY sex",
        ],
        id="group-count",
    ),
    pytest.param(
        [
            "SELECT FLOOR(age / 10) * 10 AS decade, AVG(weight_kg) AS w FROM nhanes_2017 "
            "WHERE sex = 'female' AND age BETWEEN 20 AND 60 GROUP BY decade ORDER BY w DESC LIMIT 3",
            "select floor(AGE/10)*10 as DECADE, avg(WEIGHT_KG) as W from nhanes_2017\n"
            "where SEX='female' and AGE between 20 and 60 -- adults\ngroup by Decade order by W desc limit 3",
            "SELECT FLOOR(t.age / 10) * 10 AS decade, AVG(t.weight_kg) AS w /* mean */ FROM nhanes_2017 t "
            "WHERE t.sex = 'female' AND t.age BETWEEN 20 AND 60 GROUP BY decade ORDER BY w DESC LIMIT 3;",
        ],
        id="bin-where-order",
    ),
]


@pytest.mark.parametrize("queries", EQUIVALENT)
def test_normalized_sql_ignores_whitespace_case_comments(queries: list[str]) -> None:
    texts = {run(q).normalized_sql for q in queries}
    assert len(texts) == 1
    (text,) = texts
    assert "--" not in text and "/*" not in text


def test_normalized_sql_differs_when_the_query_differs() -> None:
    a = run("SELECT COUNT(*) FROM nhanes_2017 WHERE age > 18").normalized_sql
    b = run("SELECT COUNT(*) FROM nhanes_2017 WHERE age > 19").normalized_sql
    c = run("SELECT COUNT(*) FROM nhanes_2017 WHERE sex = 'Female'").normalized_sql
    d = run("SELECT COUNT(*) FROM nhanes_2017 WHERE sex = 'female'").normalized_sql
    assert len({a, b, c, d}) == 4
