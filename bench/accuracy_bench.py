"""Accuracy benchmark: the same DP queries at the same epsilon through our gateway, through OpenDP
used directly, and through SmartNoise SQL (in its own environment), on the real demo data.

    python bench/accuracy_bench.py [--reps 25] [--epsilon 1.0] [--smartnoise-python PATH]

For each query: the exact answer (DuckDB on the same Parquet, values clamped to the declared
bounds), then ``reps`` noisy answers from each system; reported: the median absolute error and
the median wall time per answer. (GREATEST/LEAST skip NULLs in DuckDB, so the exact
queries filter NULLs out first.) Our answers go through the real Flask app in-process (grant
check, analyser, ledger charge, engine, OpenDP noise, audit); each repetition differs by an
always-true ``WHERE age > -k`` so the cache does not replay it. OpenDP is called directly with
the equivalent measurements (clamp, count / sum with Laplace noise, private quantile). SmartNoise
SQL pins an older OpenDP, so it runs in a separate interpreter (``--smartnoise-python``, e.g. a
venv with ``pip install smartnoise-sql``); without one its column says "not run". Not a test:
nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import duckdb
import opendp.prelude as dp

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

dp.enable_features("contrib")

# (label, our SQL (with {k}), exact SQL over {src}, OpenDP recipe, SmartNoise SQL or None)
QUERIES = [
    ("COUNT(*)", "SELECT COUNT(*) AS v FROM nhanes_2017 WHERE age > -{k}",
     "SELECT COUNT(*) FROM {src}", "count", "SELECT COUNT(*) AS v FROM nhanes.nhanes"),
    ("SUM(age)", "SELECT SUM(age) AS v FROM nhanes_2017 WHERE age > -{k}",
     "SELECT SUM(LEAST(GREATEST(age, 0), 80)) FROM {src} WHERE age IS NOT NULL", "sum_age",
     "SELECT SUM(age) AS v FROM nhanes.nhanes"),
    ("AVG(age)", "SELECT AVG(age) AS v FROM nhanes_2017 WHERE age > -{k}",
     "SELECT AVG(LEAST(GREATEST(age, 0), 80)) FROM {src} WHERE age IS NOT NULL", "mean_age",
     "SELECT AVG(age) AS v FROM nhanes.nhanes"),
    ("MEDIAN(age)", "SELECT MEDIAN(age) AS v FROM nhanes_2017 WHERE age > -{k}",
     "SELECT MEDIAN(LEAST(GREATEST(age, 0), 80)) FROM {src} WHERE age IS NOT NULL", "median_age", None),
    ("VAR_POP(height_cm)", "SELECT VAR_POP(height_cm) AS v FROM nhanes_2017 WHERE age > -{k}",
     "SELECT VAR_POP(LEAST(GREATEST(height_cm, 50), 210)) FROM {src} WHERE height_cm IS NOT NULL", None,
     "SELECT VAR(height_cm) AS v FROM nhanes.nhanes"),
    ("COUNT(DISTINCT seqn)", "SELECT COUNT(DISTINCT seqn) AS v FROM nhanes_2017 WHERE age > -{k}",
     "SELECT COUNT(DISTINCT seqn) FROM {src}", "count", None),
]


def ours(data_root: Path, epsilon: float, reps: int) -> dict[str, tuple[list[float], list[float]]]:
    from gateway.app import create_app
    from sandbox.policy.loader import load_policies
    from sandbox.services import Services, Settings
    from sandbox.state.grants_store import apply_policies

    state = Path(tempfile.mkdtemp(prefix="acc-state-"))
    policies = Path(tempfile.mkdtemp(prefix="acc-policies-"))
    (policies / "datasets").mkdir()
    (policies / "grants").mkdir()
    (policies / "datasets" / "nhanes_2017.yaml").write_text((REPO / "policies/datasets/nhanes_2017.yaml").read_text())
    grants = []
    for i in range(len(QUERIES)):
        grants.append(f"g-acc-{i}")
        (policies / "grants" / f"g-acc-{i}.yaml").write_text(textwrap.dedent(f"""
            id: g-acc-{i}
            operator: Benchmark
            members: [bench]
            mode: scenario
            purpose: accuracy benchmark
            datasets: {{nhanes_2017: {{columns: [age, height_cm, sex]}}}}
            valid_from: 2020-01-01
            valid_until: 2099-12-31
            budget: {{epsilon: 100.0}}
            max_epsilon_per_query: {epsilon}
        """))
    services = Services(Settings(state_dir=state, data_root=data_root))
    apply_policies(services.policies, load_policies(policies), "bench")
    services.engine.ensure(services.policies.datasets())
    client = create_app(services=services).test_client()
    headers = {"Authorization": f"Bearer {services.tokens.create('bench')}"}
    out = {}
    for grant, (label, sql, *_rest) in zip(grants, QUERIES, strict=True):
        values, times = [], []
        for k in range(1, reps + 1):
            t0 = time.perf_counter()
            body = client.post("/v1/query", headers=headers,
                               json={"sql": sql.format(k=k), "epsilon": epsilon, "grant": grant}).get_json()
            times.append(time.perf_counter() - t0)
            values.append(float(body["rows"][0][0]))
        out[label] = (values, times)
    return out


def opendp_direct(parquet: Path, epsilon: float, reps: int) -> dict[str, tuple[list[float], list[float]]]:
    rows = duckdb.sql(f"SELECT CAST(age AS DOUBLE) FROM '{parquet}' WHERE age IS NOT NULL").fetchall()
    ages = [min(max(r[0], 0.0), 80.0) for r in rows]
    ints = [int(round(a)) for a in ages]
    space = dp.vector_domain(dp.atom_domain(T=int)), dp.symmetric_distance()
    count = space >> dp.t.then_count() >> dp.m.then_laplace(scale=1.0 / epsilon)
    fspace = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance()
    total = (fspace >> dp.t.then_clamp((0.0, 80.0)) >> dp.t.then_sum() >> dp.m.then_laplace(scale=80.0 / epsilon))
    half_count = space >> dp.t.then_count() >> dp.m.then_laplace(scale=2.0 / epsilon)
    half_total = (fspace >> dp.t.then_clamp((0.0, 80.0)) >> dp.t.then_sum() >> dp.m.then_laplace(scale=160.0 / epsilon))
    median = dp.binary_search_chain(
        lambda s: space >> dp.m.then_private_quantile(dp.max_divergence(), candidates=list(range(0, 81)),
                                                      alpha=0.5, scale=s),
        d_in=1, d_out=epsilon)
    recipes = {
        "count": lambda: float(count(ints)),
        "sum_age": lambda: float(total(ages)),
        "mean_age": lambda: float(half_total(ages)) / max(1.0, float(half_count(ints))),
        "median_age": lambda: float(median(ints)),
    }
    out = {}
    for label, _sql, _exact, recipe, _sn in QUERIES:
        if recipe is None:
            continue
        values, times = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            values.append(recipes[recipe]())
            times.append(time.perf_counter() - t0)
        out[label] = (values, times)
    return out


SMARTNOISE = textwrap.dedent("""
    import json, sys, time
    import pandas as pd, snsql
    from snsql import Privacy
    parquet, epsilon, reps, queries = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
    df = pd.read_parquet(parquet)[["seqn", "age", "height_cm"]]
    df["age"] = df["age"].clip(0, 80)
    df["height_cm"] = df["height_cm"].clip(50, 210)
    meta = {"": {"nhanes": {"nhanes": {
        "max_ids": 1, "row_privacy": False,
        "seqn": {"type": "int", "private_id": True},
        "age": {"type": "float", "lower": 0.0, "upper": 80.0},
        "height_cm": {"type": "float", "lower": 50.0, "upper": 210.0}}}}}
    out = {}
    for label, sql in queries:
        values, times = [], []
        for _ in range(reps):
            reader = snsql.from_df(df, privacy=Privacy(epsilon=epsilon, delta=1e-9), metadata=meta)
            t0 = time.perf_counter()
            values.append(float(reader.execute(sql)[1][0]))
            times.append(time.perf_counter() - t0)
        out[label] = [values, times]
    print(json.dumps(out))
""")


def smartnoise(python: str | None, parquet: Path, epsilon: float, reps: int) -> dict:
    if not python:
        return {}
    queries = [(label, sn) for label, _sql, _exact, _recipe, sn in QUERIES if sn]
    proc = subprocess.run([python, "-c", SMARTNOISE, str(parquet), str(epsilon), str(reps), json.dumps(queries)],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        print("SmartNoise SQL failed:", proc.stderr.strip().splitlines()[-1:], file=sys.stderr)
        return {}
    return {k: tuple(v) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def summary(result: tuple[list[float], list[float]] | None, exact: float) -> str:
    if not result:
        return f"{'not run':>22}"
    values, times = result
    error = statistics.median(abs(v - exact) for v in values)
    return f"{error:>12.3f} {statistics.median(times) * 1000:>7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=25)
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--smartnoise-python", default=None)
    args = parser.parse_args()
    from sandbox.demo_data import import_demo

    data_root = Path(tempfile.mkdtemp(prefix="acc-data-"))
    import_demo(data_root, progress=lambda _m: None)
    parquet = data_root / "nhanes_2017.parquet"
    exact = {label: float(duckdb.sql(e.format(src=f"'{parquet}'")).fetchall()[0][0])
             for label, _s, e, _r, _sn in QUERIES}
    systems = {
        "ours (gateway)": ours(data_root, args.epsilon, args.reps),
        "OpenDP direct": opendp_direct(parquet, args.epsilon, args.reps),
        "SmartNoise SQL": smartnoise(args.smartnoise_python, parquet, args.epsilon, args.reps),
    }
    print(f"NHANES 2017-2018, epsilon {args.epsilon} per query, {args.reps} repetitions; "
          "median absolute error and median time per answer")
    print(f"{'query':<22} {'exact':>12} " + " ".join(f"{name:>22}" for name in systems))
    for label, *_ in QUERIES:
        cells = " ".join(summary(results.get(label), exact[label]) for results in systems.values())
        print(f"{label:<22} {exact[label]:>12.3f} {cells}")


if __name__ == "__main__":
    main()
