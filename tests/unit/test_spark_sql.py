"""The DuckDB engine SQL transpiled to Spark (no Spark needed): the patches of sandbox.spark_sql are applied.

That the transpiled SQL answers as DuckDB does is shown on real Spark in
tests/integration/test_spark_engine.py; here the shapes are pinned."""

from __future__ import annotations

from sandbox.spark_sql import id_matches_spark, to_spark


def test_try_becomes_ieee_division_and_is_dropped() -> None:
    out = to_spark('SELECT COUNT(*) FROM "t" WHERE COALESCE(TRY(CAST("a" AS DOUBLE) / CAST("b" AS DOUBLE) > '
                   'CAST(1 AS DOUBLE)), FALSE)')
    assert "TRY" not in out.upper().replace("TRY_CAST", "")
    assert "TRANSFORM(ARRAY(STRUCT(" in out and "CAST('Infinity' AS DOUBLE)" in out
    assert out.count(" / ") == 1  # once, inside the lambda


def test_nested_divisions_are_evaluated_once_each() -> None:
    out = to_spark('SELECT COUNT(*) FROM "t" WHERE COALESCE(TRY("a" / ("b" / ("c" / "d")) > 1), FALSE)')
    assert out.count(" / ") == 3 and out.count("`d`") == 1


def test_sums_are_exact_decimals_and_floor_stays_double() -> None:
    out = to_spark('SELECT FLOOR("x" / 2.5) * 2.5 AS k0, SUM("__v_x") AS a0 FROM "t" GROUP BY k0')
    assert "SUM(CAST(`__v_x` AS DECIMAL(38, 0)))" in out
    assert "CAST(2.5 AS DOUBLE)" in out and "CAST(FLOOR(" in out and "AS DOUBLE)" in out


def test_windows_over_the_prf_sort_as_unsigned() -> None:
    out = to_spark('SELECT row_number() OVER (PARTITION BY p."__unit" ORDER BY xor(p."__row", COALESCE(l."__row", 0)), '
                   'p."__row") AS r FROM "a" AS p JOIN "b" AS l ON p."__unit" = l."__unit"')
    assert out.count("^ SHIFTLEFT(CAST(1 AS BIGINT), 63)") == 2


def test_identifier_matches_take_hex_digests_only() -> None:
    import pytest

    assert "explode(array('" + "a" * 64 + "'))" in id_matches_spark("__ids_t", ["a" * 64])
    with pytest.raises(ValueError):
        id_matches_spark("__ids_t", ["x') OR TRUE --"])
