"""Benchmark (opt-in, by hand): 100 million rows on one machine, through the real gateway.

    python bench/scale_100m.py [--rows 100000000] [--reps 5] [--dir DIR] [--keep]

Generates ``--rows`` seeded synthetic rows of the shape of ``bench_build.py`` / ``run_bench.py``
(person ids with 1-5 rows each, 16 districts, 40 sectors, 6 years, income 0..500,000) with
DuckDB's COPY into a temporary directory; starts ``sandbox serve`` over it (which builds the engine
file in its import child: contribution bound, fixed point), and reports the build's wall time and
the child's peak memory; then times DP queries through the gateway's HTTP API (bound enforced,
noise, budget charged, audit appended) against the same aggregate in raw DuckDB on the same
Parquet, and prints the ratios and the gateway's peak memory. Needs about 10 GB of free disk at
100M rows (Parquet, engine file, spill); everything is removed at the end unless ``--keep``.
Not a test: nothing here asserts, and the test suite never runs it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import requests
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from run_bench import free_port, generate, synthetic_dataset, wait_ready  # noqa: E402

QUERIES = [
    ("COUNT(*) GROUP BY district",
     "SELECT district, COUNT(*) AS n FROM synthetic GROUP BY district",
     "SELECT district, COUNT(*) FROM {src} GROUP BY district"),
    ("AVG(income) GROUP BY district",
     "SELECT district, AVG(income) AS m FROM synthetic GROUP BY district",
     "SELECT district, AVG(income) FROM {src} GROUP BY district"),
    ("SUM(income) GROUP BY sector, year",
     "SELECT sector, year, SUM(income) AS s FROM synthetic GROUP BY sector, year",
     "SELECT sector, year, SUM(income) FROM {src} GROUP BY sector, year"),
    ("COUNT(*) WHERE year >= 2022 GROUP BY sector",
     "SELECT sector, COUNT(*) AS n FROM synthetic WHERE year >= 2022 GROUP BY sector",
     "SELECT sector, COUNT(*) FROM {src} WHERE year >= 2022 GROUP BY sector"),
    ("COUNT(DISTINCT person) GROUP BY year",
     "SELECT year, COUNT(DISTINCT person_id) AS people FROM synthetic GROUP BY year",
     "SELECT year, COUNT(DISTINCT person_id) FROM {src} GROUP BY year"),
]


def status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def median_time(run, reps: int) -> float:  # noqa: ANN001
    run(0)  # warm: the connection, the engine cursor, the file cache
    times = []
    for i in range(1, reps + 1):
        t0 = time.perf_counter()
        run(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-rows-per-unit", type=int, default=5, help="5 keeps every row (1-5 rows per person)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="DuckDB threads, gateway and raw")
    ap.add_argument("--build-memory", default="4GB")
    ap.add_argument("--engine-memory", default="600MB", help="the gateway's default")
    ap.add_argument("--dir", type=Path, default=None, help="where to work (default: a new temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the data, state and engine file")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="scale-", dir=args.dir))
    data, pol, state = work / "data", work / "policies", work / "state"
    for d in (data, pol / "datasets", pol / "grants"):
        d.mkdir(parents=True)
    proc: subprocess.Popen | None = None
    try:
        t0 = time.perf_counter()
        generate(data / "synthetic.parquet", args.rows)
        print(f"generated {args.rows:,} rows in {time.perf_counter() - t0:.0f} s "
              f"({(data / 'synthetic.parquet').stat().st_size / 1e9:.2f} GB Parquet); "
              f"{os.cpu_count()} cores", flush=True)
        spec = synthetic_dataset()
        spec["max_rows_per_unit"] = args.max_rows_per_unit
        (pol / "datasets" / "synthetic.yaml").write_text(yaml.safe_dump(spec))
        grant = yaml.safe_load((REPO / "policies" / "grants" / "g-2026-001.yaml").read_text())
        grant.update(id="g-scale", members=["bench"], budget={"epsilon": 100.0}, max_epsilon_per_query=1.0,
                     datasets={"synthetic": {"columns": ["district", "sector", "year", "income"]}})
        (pol / "grants" / "g-scale.yaml").write_text(yaml.safe_dump(grant))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        sandbox = [sys.executable, "-m", "sandbox.cli"]
        subprocess.run([*sandbox, "admin", "init", "--state", str(state)], check=True, capture_output=True, env=env)
        token = subprocess.run([*sandbox, "tokens", "create", "bench", "--state", str(state)], check=True,
                               capture_output=True, text=True, env=env).stdout.strip()
        port = free_port()
        log_path = work / "serve.log"
        log = log_path.open("w")  # noqa: SIM115 - open for the server's lifetime
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [*sandbox, "serve", "--data-root", str(data), "--policies", str(pol), "--state", str(state),
             "--port", str(port), "--engine-threads", str(args.threads), "--engine-memory", args.engine_memory,
             "--build-memory", args.build_memory],
            stdout=subprocess.DEVNULL, stderr=log, text=True, env=env,
        )
        url, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}
        wait_ready(lambda: requests.get(url + "/v1/budget", headers=headers, timeout=1), proc, log_path, pause=1)
        ready = time.perf_counter() - t0
        served = log_path.read_text()
        built = re.search(r"built in ([0-9.]+) s \(import process peak memory ([0-9]+) MB\)", served)
        kept = re.search(r"synthetic: ([0-9,]+) rows kept", served)
        engine_file = next((state / "engine").glob("catalog-*.duckdb"))
        print(f"gateway ready in {ready:.0f} s; engine build {built.group(1) if built else '?'} s, "
              f"build child peak memory {built.group(2) if built else '?'} MB; "
              f"{kept.group(1) if kept else '?'} rows kept; engine file {engine_file.stat().st_size / 1e9:.2f} GB",
              flush=True)
        print(f"gateway memory after start: peak (VmHWM) {status_mb(proc.pid, 'VmHWM'):.0f} MB", flush=True)

        raw = duckdb.connect(config={"threads": args.threads})
        src = f"read_parquet('{data / 'synthetic.parquet'}')"
        print(f"\n{'query':45} {'raw DuckDB':>11} {'gateway':>9} {'ratio':>6} {'gateway peak':>13}")
        ratios = []
        for label, dp_sql, raw_sql in QUERIES:
            t_raw = median_time(lambda _i, q=raw_sql.format(src=src): raw.execute(q).fetchall(), args.reps)

            def ask(i: int, q: str = dp_sql) -> None:
                body = {"sql": q, "epsilon": 0.01 + i * 1e-4 + len(q) * 1e-7, "grant": "g-scale"}
                r = requests.post(url + "/v1/query", json=body, headers=headers, timeout=600)
                if r.status_code != 200 or r.json()["cached"]:
                    raise SystemExit(f"gateway: {r.status_code} {r.text}")

            t_api = median_time(ask, args.reps)
            ratios.append(t_api / t_raw)
            print(f"{label:45} {t_raw * 1e3:9.0f}ms {t_api * 1e3:7.0f}ms {t_api / t_raw:5.2f}x "
                  f"{status_mb(proc.pid, 'VmHWM'):10.0f} MB", flush=True)
        print(f"\nworst ratio {max(ratios):.2f}x (target <= 1.5x); gateway memory: peak (VmHWM) "
              f"{status_mb(proc.pid, 'VmHWM'):.0f} MB, now (VmRSS) {status_mb(proc.pid, 'VmRSS'):.0f} MB "
              f"(target < 1024 MB)")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
