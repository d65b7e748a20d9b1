"""Benchmark: the Spark engine against the DuckDB engine and raw DuckDB, at 10M rows.

    python bench/spark_engine.py [--rows 10000000] [--reps 5] [--master local[2]] [--spark-memory 4g]

Generates the seeded synthetic table of ``run_bench.py`` once (bench/data/), then times the engine
build (contribution bound, clamping, fixed point) in the DuckDB engine (its import child) and in
the Spark engine (Spark in local mode in this process; the JVM's start is timed apart), and the
exact bounded aggregates of a few plans in both engines (no noise, no gateway) against the same
aggregates in raw DuckDB on the Parquet. Prints medians and ratios. Not a test: nothing here asserts
(except that both engines agree on every answer).
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import duckdb  # noqa: E402
from run_bench import DATA, generate, synthetic_dataset  # noqa: E402

from sandbox.bounding import KEY_FILE  # noqa: E402
from sandbox.dp.planner import plan_dp  # noqa: E402
from sandbox.engine import Engine  # noqa: E402
from sandbox.engine_spark import SparkEngine, SparkOptions, spark_session, stop_session  # noqa: E402
from sandbox.policy.models import Dataset  # noqa: E402
from sandbox.sql.analyze import analyze  # noqa: E402

# (label, the operator's SQL, the same aggregate in raw DuckDB over {src})
QUERIES = [
    ("COUNT(*) GROUP BY district",
     "SELECT district, COUNT(*) FROM synthetic GROUP BY district",
     "SELECT district, COUNT(*) FROM {src} GROUP BY district"),
    ("AVG(income) GROUP BY district",
     "SELECT district, AVG(income) FROM synthetic GROUP BY district",
     "SELECT district, AVG(income) FROM {src} GROUP BY district"),
    ("SUM(income) GROUP BY sector, year",
     "SELECT sector, year, SUM(income) FROM synthetic GROUP BY sector, year",
     "SELECT sector, year, SUM(income) FROM {src} GROUP BY sector, year"),
    ("COUNT(DISTINCT person) WHERE",
     "SELECT year, COUNT(DISTINCT person_id) FROM synthetic WHERE income > 250000 GROUP BY year",
     "SELECT year, COUNT(DISTINCT person_id) FROM {src} WHERE income > 250000 GROUP BY year"),
    ("VAR_POP(income) GROUP BY district",
     "SELECT district, VAR_POP(income) FROM synthetic GROUP BY district",
     "SELECT district, VAR_POP(income) FROM {src} GROUP BY district"),
    ("MEDIAN(income)",
     "SELECT MEDIAN(income) FROM synthetic",
     "SELECT MEDIAN(income) FROM {src}"),
]


def median_time(run: Callable[[], object], reps: int) -> float:
    run()  # warm
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-rows-per-unit", type=int, default=2, help="bound (the data has 1-5 rows per unit)")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--spark-memory", default="4g")
    ap.add_argument("--shuffle-partitions", type=int, default=8)
    args = ap.parse_args()
    src = DATA / f"synthetic-{args.rows}.parquet"
    generate(src, args.rows)
    spec = synthetic_dataset()
    spec.update(source=src.name, max_rows_per_unit=args.max_rows_per_unit)
    duck_ds = Dataset.model_validate(spec)
    spark_ds = Dataset.model_validate({**spec, "engine": "spark"})
    print(f"{args.rows:,} rows, bound {args.max_rows_per_unit}, {os.cpu_count()} cores; Spark {args.master}")
    with tempfile.TemporaryDirectory() as tmp:
        key = secrets.token_bytes(32)
        duck_dir, spark_dir = Path(tmp) / "duck", Path(tmp) / "spark"
        duck_dir.mkdir()
        (duck_dir / KEY_FILE).write_bytes(key)
        duck = Engine(DATA, duck_dir)
        t0 = time.perf_counter()
        duck.ensure({"synthetic": duck_ds})
        duck_build = time.perf_counter() - t0
        options = SparkOptions(master=args.master, driver_memory=args.spark_memory,
                               shuffle_partitions=args.shuffle_partitions, local_dir=spark_dir / "local")
        t0 = time.perf_counter()
        spark_session(options)
        jvm = time.perf_counter() - t0
        spark = SparkEngine(DATA, spark_dir, duck_dir / KEY_FILE, options)
        t0 = time.perf_counter()
        spark.ensure({"synthetic": spark_ds})
        spark_build = time.perf_counter() - t0
        print(f"build: DuckDB engine {duck_build:.1f} s, Spark engine {spark_build:.1f} s "
              f"(+ {jvm:.1f} s JVM start), ratio {spark_build / duck_build:.1f}x")
        raw = duckdb.connect()
        raw.sql(f"SET threads = {os.cpu_count() or 2}")
        print(f"{'query':36} {'raw DuckDB':>11} {'DuckDB eng':>11} {'Spark eng':>11} {'duck/raw':>9} "
              f"{'spark/raw':>10} {'spark/duck':>11}")
        catalog, granted = {"synthetic": duck_ds}, {"synthetic": set(duck_ds.columns) - {"person_id"}}
        for label, sql, raw_sql in QUERIES:
            plan = plan_dp(analyze(sql, catalog, granted), duck_ds, 1.0)
            spark_plan = plan_dp(analyze(sql, {"synthetic": spark_ds}, granted), spark_ds, 1.0)
            if duck.exact(plan) != spark.exact(spark_plan):
                print(f"  {label}: the engines disagree")
            raw_text = raw_sql.format(src=f"read_parquet('{src}')")
            t_raw = median_time(lambda q=raw_text: raw.sql(q).fetchall(), args.reps)
            t_duck = median_time(lambda p=plan: duck.exact(p), args.reps)
            t_spark = median_time(lambda p=spark_plan: spark.exact(p), args.reps)
            print(f"{label:36} {t_raw * 1000:9.0f}ms {t_duck * 1000:9.0f}ms {t_spark * 1000:9.0f}ms "
                  f"{t_duck / t_raw:8.1f}x {t_spark / t_raw:9.1f}x {t_spark / t_duck:10.1f}x")
        stop_session()


if __name__ == "__main__":
    main()
