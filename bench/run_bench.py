"""Benchmark: DP queries through the gateway's HTTP API against raw DuckDB, measured in one run.

    python bench/run_bench.py [--rows 10000000] [--reps 7]

Generates (once, seeded) a synthetic table: person ids with 1-5 rows each, 16 districts,
40 sectors, 6 years, income 0..500,000; writes it to Parquet; starts `sandbox serve` as a
subprocess over it and the demo data; then times each query through the API (contribution
bound enforced, noise added, budget charged, audit appended) and the same exact aggregate
in raw DuckDB on the same Parquet. Prints medians, ratios, the target check
(<= 2x raw + 15 ms) and the gateway's peak memory. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import requests
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / "data"

QUERIES = [
    ("synthetic", "COUNT(*) GROUP BY district",
     "SELECT district, COUNT(*) AS n FROM synthetic GROUP BY district",
     "SELECT district, COUNT(*) FROM {src} GROUP BY district"),
    ("synthetic", "AVG(income) GROUP BY district",
     "SELECT district, AVG(income) AS mean_income FROM synthetic GROUP BY district",
     "SELECT district, AVG(income) FROM {src} GROUP BY district"),
    ("synthetic", "SUM(income) GROUP BY sector, year",
     "SELECT sector, year, SUM(income) AS total FROM synthetic GROUP BY sector, year",
     "SELECT sector, year, SUM(income) FROM {src} GROUP BY sector, year"),
    ("nhanes_2017", "demo: COUNT, AVG(age) GROUP BY sex, race",
     "SELECT sex, race, COUNT(*) AS n, AVG(age) AS a FROM nhanes_2017 GROUP BY sex, race",
     "SELECT sex, race, COUNT(*), AVG(age) FROM {src} GROUP BY sex, race"),
    ("adult_income", "demo: COUNT GROUP BY education, income",
     "SELECT education, income, COUNT(*) AS n FROM adult_income GROUP BY education, income",
     "SELECT education, income, COUNT(*) FROM {src} GROUP BY education, income"),
]



def wait_ready(probe: Callable[[], object], proc: subprocess.Popen, log: Path, pause: float = 0.2) -> None:
    """Until ``probe`` (a request to the gateway) connects; the serve log as the exit message if it died."""
    while True:
        try:
            probe()
            return
        except requests.ConnectionError:
            if proc.poll() is not None:
                raise SystemExit(log.read_text()) from None
            time.sleep(pause)

def synthetic_dataset() -> dict:
    return {
        "id": "synthetic", "title": "Synthetic enterprise register (benchmark)",
        "source": "synthetic.parquet", "classification": "L2", "privacy_unit": "person_id",
        "max_rows_per_unit": 5,
        "columns": {
            "person_id": {"type": "id"},
            "district": {"type": "category", "values": [f"d{i:02d}" for i in range(1, 17)]},
            "sector": {"type": "category", "values": [f"s{i:02d}" for i in range(1, 41)]},
            "year": {"type": "int", "bounds": [2019, 2024]},
            "income": {"type": "int", "bounds": [0, 500000]},
        },
    }


def generate(path: Path, rows: int) -> None:
    if path.exists() and duckdb.sql(f"SELECT COUNT(*) FROM '{path}'").fetchall()[0][0] == rows:
        return
    print(f"generating {rows:,} seeded synthetic rows -> {path.name} ...", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("SELECT setseed(0.42)")
    # each person gets 1-5 rows (a seeded hash picks how many); other columns hash (person, k)
    persons = rows // 3 + rows // 10
    con.execute(f"""
        COPY (
          WITH u AS (
            SELECT p AS person_id, UNNEST(range(CAST(1 + hash(p, 7) % 5 AS BIGINT))) AS k
            FROM range({persons}) t(p)
          )
          SELECT
            person_id,
            'd' || lpad(CAST(1 + hash(person_id, k, 1) % 16 AS VARCHAR), 2, '0') AS district,
            's' || lpad(CAST(1 + hash(person_id, k, 2) % 40 AS VARCHAR), 2, '0') AS sector,
            CAST(2019 + hash(person_id, k, 3) % 6 AS INTEGER) AS year,
            CAST(hash(person_id, k, 4) % 500001 AS BIGINT) AS income
          FROM u LIMIT {rows}
        ) TO '{path}' (FORMAT parquet, ROW_GROUP_SIZE 1000000)
    """)
    con.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def time_raw(sql: str, reps: int, con: duckdb.DuckDBPyConnection) -> float:
    con.execute(sql).fetchall()  # warm
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        con.execute(sql).fetchall()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_api(url: str, headers: dict, sql: str, reps: int, grant: str) -> float:
    times = []
    for i in range(reps + 1):
        body = {"sql": sql, "epsilon": 0.01 + (i + 1) * 1e-6 + hash(sql) % 1000 * 1e-9, "grant": grant}
        t0 = time.perf_counter()
        r = requests.post(url + "/v1/query", json=body, headers=headers, timeout=600)
        elapsed = time.perf_counter() - t0
        if r.status_code != 200:
            raise SystemExit(f"gateway refused {sql!r}: {r.status_code} {r.text}")
        assert r.json()["cached"] is False
        if i:  # the first call warms the connection and the engine cursor
            times.append(elapsed)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()

    from sandbox.demo_data import import_demo

    generate(DATA / "synthetic.parquet", args.rows)
    import_demo(DATA, progress=lambda _m: None)
    with tempfile.TemporaryDirectory() as tmp:
        pol = Path(tmp) / "policies"
        (pol / "datasets").mkdir(parents=True)
        (pol / "grants").mkdir()
        for f in (REPO / "policies" / "datasets").glob("*.yaml"):
            (pol / "datasets" / f.name).write_text(f.read_text())
        (pol / "datasets" / "synthetic.yaml").write_text(yaml.safe_dump(synthetic_dataset()))
        grant = yaml.safe_load((REPO / "policies" / "grants" / "g-2026-001.yaml").read_text())
        grant.update(id="g-bench", members=["bench"], budget={"epsilon": 100.0}, max_epsilon_per_query=1.0)
        grant["datasets"]["synthetic"] = {"columns": ["district", "sector", "year", "income"]}
        (pol / "grants" / "g-bench.yaml").write_text(yaml.safe_dump(grant))
        state = Path(tmp) / "state"
        sandbox = [sys.executable, "-m", "sandbox.cli.__main__"]
        subprocess.run(sandbox + ["admin", "init", "--state", str(state)], check=True, capture_output=True)
        token = subprocess.run(sandbox + ["tokens", "create", "bench", "--state", str(state)],
                               check=True, capture_output=True, text=True).stdout.strip()
        port = free_port()
        t0 = time.perf_counter()
        log = (Path(tmp) / "serve.log").open("w")  # noqa: SIM115 - open for the server's lifetime
        proc = subprocess.Popen(
            sandbox + ["serve", "--data-root", str(DATA), "--policies", str(pol), "--state", str(state),
                       "--port", str(port), "--engine-threads", str(os.cpu_count() or 2)],
            stdout=subprocess.DEVNULL, stderr=log, text=True,
        )
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {token}"}
        try:
            wait_ready(lambda: requests.get(url + "/v1/budget", headers=headers, timeout=1), proc,
                       Path(tmp) / "serve.log")
            ready = time.perf_counter() - t0
            print(f"gateway ready (engine import incl. contribution bound) in {ready:.1f} s")
            raw = duckdb.connect(config={"threads": os.cpu_count() or 2})
            native = duckdb.connect(str(next((state / "engine").glob("catalog-*.duckdb"))), read_only=True)
            print(f"\n{'query':45} {'raw parquet':>12} {'raw table':>10} {'gateway':>10} {'ratio':>7}  target")
            for ds, label, dp_sql, raw_sql in QUERIES:
                src = f"read_parquet('{DATA / (ds + '.parquet')}')"
                t_raw = time_raw(raw_sql.format(src=src), args.reps, raw)
                t_nat = time_raw(raw_sql.format(src=ds), args.reps, native)
                t_api = time_api(url, headers, dp_sql, args.reps, "g-bench")
                ok = t_api <= 2 * t_raw + 0.015
                print(f"{label:45} {t_raw*1e3:10.1f}ms {t_nat*1e3:8.1f}ms {t_api*1e3:8.1f}ms "
                      f"{t_api / t_raw:6.2f}x  {'met' if ok else 'MISSED'}")
            print(f"\ngateway peak memory (VmHWM): {peak_rss_mb(proc.pid):.0f} MB")
            for line in (Path(tmp) / "serve.log").read_text().splitlines():
                if "built in" in line:
                    print(line.replace("engine: ", "engine file "))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()


if __name__ == "__main__":
    main()
