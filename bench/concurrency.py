"""Benchmark: many operators at once. 16 concurrent clients issue distinct DP queries at
10M rows against a real `sandbox serve` on loopback, against raw DuckDB doing the same exact
aggregates on the same Parquet with 16 concurrent cursors, in one run.

    python bench/concurrency.py [--rows 10000000] [--clients 16] [--per-client 8] [--no-profile]

Reports throughput (queries/s) and p50/p99 latency for both, the gateway's peak memory, and,
unless --no-profile, where the gateway's request threads spent their time during the
concurrent run (py-spy, sampling the serving process without stopping it, idle time
included so waiting on SQLite's write lock shows up; `pip install -e ".[bench]"`): the ledger (charge in one
`BEGIN IMMEDIATE` transaction + audit entry, then storing the answer), the engine (DuckDB),
noise (OpenDP), SQL analysis, the rest. Not a test: nothing here asserts; every query is
distinct (no cached replays) and the audit log must record each one.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import duckdb
import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_bench import DATA, REPO, free_port, generate, peak_rss_mb, synthetic_dataset, wait_ready  # noqa: E402

EPSILON = 0.01  # x (clients x per-client + 36) queries must fit the 100-epsilon budget


def workload(n: int) -> list[tuple[str, str]]:
    """``n`` distinct (DP SQL, raw SQL with {src}) pairs: four shapes, distinct filters."""
    shapes = [  # (DP select list, raw select list, WHERE, GROUP BY)
        ("district, COUNT(*) AS n", "district, COUNT(*)",
         "year = {y} AND sector = '{s}' AND income >= {k}", "district"),
        ("district, AVG(income) AS m", "district, AVG(income)",
         "sector = '{s}' AND year >= {y} AND income >= {k}", "district"),
        ("year, SUM(income) AS t", "year, SUM(income)",
         "district = '{d}' AND sector <> '{s}' AND income >= {k}", "year"),
        ("sector, COUNT(*) AS n", "sector, COUNT(*)", "income BETWEEN {lo} AND {hi}", "sector"),
    ]
    out = []
    for i in range(n):
        params = {"k": i, "y": 2019 + i % 6, "s": f"s{1 + i % 40:02d}", "d": f"d{1 + (i * 7) % 16:02d}",
                  "lo": (i * 3917) % 400_000, "hi": (i * 3917) % 400_000 + 50_000 + i}
        dp_cols, raw_cols, where, group = shapes[i % len(shapes)]
        cond = where.format(**params)
        out.append((f"SELECT {dp_cols} FROM synthetic WHERE {cond} GROUP BY {group}",
                    f"SELECT {raw_cols} FROM {{src}} WHERE {cond} GROUP BY {group}"))
    assert len({dp for dp, _ in out}) == n, "queries must be distinct"
    return out


class Backend(Protocol):
    def open(self) -> Any: ...
    def call(self, sql: str, state: Any) -> None: ...


def run_concurrent(clients: int, jobs: list[list[str]], backend: Backend) -> tuple[float, list[float]]:
    """Each client opens its own session/cursor and runs its jobs one after another.

    Returns (wall seconds from the common start, per-query latencies).
    """
    latencies: list[float] = []
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        state = backend.open()
        ready.wait()
        for sql in jobs[i]:
            t0 = time.perf_counter()
            backend.call(sql, state)
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, i) for i in range(clients)]
        ready.wait()
        t0 = time.perf_counter()
        for f in futures:
            f.result()
    return time.perf_counter() - t0, latencies


class Gateway:
    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    def open(self) -> requests.Session:
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {self.token}"
        return s

    def call(self, sql: str, session: requests.Session) -> None:
        r = session.post(self.url + "/v1/query", json={"sql": sql, "epsilon": EPSILON, "grant": "g-bench"},
                         timeout=600)
        if r.status_code != 200 or r.json().get("cached"):
            raise SystemExit(f"gateway: {r.status_code} {r.text[:300]}")


class Raw:
    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def open(self) -> duckdb.DuckDBPyConnection:
        return self.con.cursor()

    def call(self, sql: str, cur: duckdb.DuckDBPyConnection) -> None:
        cur.execute(sql).fetchall()


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


CATEGORIES = [  # first match wins, in this order (innermost concern first)
    ("ledger (charge, audit, store answer)", ("sandbox/state/ledger.py", "sandbox/state/audit.py")),
    ("engine (DuckDB)", ("sandbox/engine.py",)),
    ("noise (OpenDP)", ("sandbox/dp/",)),
    ("SQL analysis (sqlglot)", ("sandbox/sql/",)),
    ("other request work (auth, policy, JSON)", ("gateway/",)),
]


def profile_summary(raw_file: Path) -> list[tuple[str, int]]:
    """Samples per category, counting only stacks of request-handling threads."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw_file.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if "gateway/" not in stack and "sandbox/" not in stack:
            continue  # idle waitress workers, the accept loop, the engine-build child...
        for name, needles in CATEGORIES:
            if any(nd in stack for nd in needles):
                counts[name] += int(n)
                break
    return [(name, counts[name]) for name, _ in CATEGORIES]


def ledger_hotspots(raw_file: Path, top: int = 5) -> list[tuple[str, float]]:
    """The innermost project frame (sandbox/...) of ledger samples, by share of ledger samples."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw_file.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not any(nd in stack for nd in CATEGORIES[0][1]):
            continue
        ours = [f for f in stack.split(";") if "sandbox/" in f]
        counts[ours[-1] if ours else "?"] += int(n)
    total = sum(counts.values()) or 1
    return [(frame, 100 * c / total) for frame, c in counts.most_common(top)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--per-client", type=int, default=8, help="queries each client sends")
    ap.add_argument("--no-profile", action="store_true", help="do not sample the gateway with py-spy")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--profile-out", type=Path, help="keep py-spy's raw (collapsed) stacks here")
    args = ap.parse_args()
    cores = os.cpu_count() or 2
    n = args.clients * args.per_client
    queries = workload(n + 4)
    warm, queries = queries[:4], queries[4:]

    parquet = DATA / "synthetic.parquet"
    generate(parquet, args.rows)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        data = tmp / "data"
        data.mkdir()
        (data / "synthetic.parquet").symlink_to(parquet)
        pol = tmp / "policies"
        (pol / "datasets").mkdir(parents=True)
        (pol / "grants").mkdir()
        (pol / "datasets" / "synthetic.yaml").write_text(yaml.safe_dump(synthetic_dataset()))
        grant = yaml.safe_load((REPO / "policies" / "grants" / "g-2026-001.yaml").read_text())
        grant.update(id="g-bench", members=["bench"], budget={"epsilon": 100.0}, max_epsilon_per_query=1.0,
                     datasets={"synthetic": {"columns": ["district", "sector", "year", "income"]}})
        (pol / "grants" / "g-bench.yaml").write_text(yaml.safe_dump(grant))
        state = tmp / "state"
        sandbox = [sys.executable, "-m", "sandbox.cli.__main__"]
        subprocess.run(sandbox + ["admin", "init", "--state", str(state)], check=True, capture_output=True)
        token = subprocess.run(sandbox + ["tokens", "create", "bench", "--state", str(state)],
                               check=True, capture_output=True, text=True).stdout.strip()
        port = free_port()
        log = (tmp / "serve.log").open("w")  # noqa: SIM115 - open for the server's lifetime
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            sandbox + ["serve", "--data-root", str(data), "--policies", str(pol), "--state", str(state),
                       "--port", str(port), "--threads", str(args.clients), "--engine-threads", str(cores)],
            stdout=subprocess.DEVNULL, stderr=log, text=True,
        )
        url = f"http://127.0.0.1:{port}"
        gw = Gateway(url, token)
        try:
            session = gw.open()
            wait_ready(lambda: session.get(url + "/v1/budget", timeout=1), proc, tmp / "serve.log")
            print(f"{cores} cores; {args.rows:,} rows; gateway ready in {time.perf_counter() - t0:.1f} s "
                  f"(engine build included)")
            raw_con = duckdb.connect(config={"threads": cores})
            src = f"read_parquet('{parquet}')"
            for dp, raw in warm:  # warm both (page cache, engine cursor, connections)
                gw.call(dp, session)
                raw_con.execute(raw.format(src=src)).fetchall()
            jobs_dp = [[dp for dp, _ in queries[i::args.clients]] for i in range(args.clients)]
            jobs_raw = [[raw.format(src=src) for _, raw in queries[i::args.clients]] for i in range(args.clients)]

            spy = None
            prof = tmp / "gateway.pyspy"
            if not args.no_profile and shutil.which("py-spy"):
                spy = subprocess.Popen(["py-spy", "record", "--pid", str(proc.pid), "--rate", "50", "--idle",
                                        "--nonblocking", "--format", "raw", "-o", str(prof)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            wall_gw, lat_gw = run_concurrent(args.clients, jobs_dp, gw)
            if spy:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
            wall_raw, lat_raw = run_concurrent(args.clients, jobs_raw, Raw(raw_con))
            # 1 client, for scale: the same number of queries one after another
            wall_one, _ = run_concurrent(1, [[dp for dp, _ in workload(n + 4 + 32)[n + 4:]]], gw)

            audit = subprocess.run(sandbox + ["budget", "show", "g-bench", "--state", str(state)],
                                   capture_output=True, text=True).stdout.strip()
            fig = {
                "cores": cores, "rows": args.rows, "clients": args.clients, "queries": n,
                "gateway_qps": n / wall_gw, "gateway_p50_ms": pct(lat_gw, 50) * 1e3,
                "gateway_p99_ms": pct(lat_gw, 99) * 1e3,
                "raw_qps": n / wall_raw, "raw_p50_ms": pct(lat_raw, 50) * 1e3, "raw_p99_ms": pct(lat_raw, 99) * 1e3,
                "gateway_1client_qps": 32 / wall_one,
                "gateway_peak_rss_mb": peak_rss_mb(proc.pid),
            }
            print(f"\n{'':28} {'queries/s':>10} {'p50':>9} {'p99':>9}")
            label_gw, label_raw = f"gateway, {args.clients} clients", f"raw DuckDB, {args.clients} cursors"
            print(f"{label_gw:28} {fig['gateway_qps']:10.1f} "
                  f"{fig['gateway_p50_ms']:7.0f}ms {fig['gateway_p99_ms']:7.0f}ms")
            print(f"{label_raw:28} {fig['raw_qps']:10.1f} "
                  f"{fig['raw_p50_ms']:7.0f}ms {fig['raw_p99_ms']:7.0f}ms")
            print(f"{'gateway, 1 client':28} {fig['gateway_1client_qps']:10.1f}")
            print(f"throughput ratio gateway/raw: {fig['gateway_qps'] / fig['raw_qps']:.2f}; "
                  f"gateway peak memory {fig['gateway_peak_rss_mb']:.0f} MB")
            print(f"budget after the run: {audit}")
            if spy and prof.exists():
                summary = profile_summary(prof)
                total = sum(c for _, c in summary) or 1
                print("\nwhere the request threads spent the concurrent run (py-spy, idle included):")
                for name, c in summary:
                    print(f"  {name:42} {100 * c / total:5.1f}%")
                fig["profile_pct"] = {name: round(100 * c / total, 1) for name, c in summary}
                print("  innermost gateway frames of the ledger samples:")
                for frame, share in ledger_hotspots(prof):
                    print(f"    {share:5.1f}%  {frame}")
                if args.profile_out:
                    shutil.copyfile(prof, args.profile_out)
            if args.json:
                args.json.write_text(json.dumps(fig, indent=2) + "\n")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()


if __name__ == "__main__":
    main()
