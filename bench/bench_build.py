"""Benchmark: the engine build (contribution bound) at 10M rows, in the child process.

    python bench/bench_build.py [--rows 10000000] [--memory 4GB]

Generates the seeded synthetic table of ``run_bench.py`` once (bench/data/), then times
``sandbox.engine.build_in_child`` over it and prints the wall time and the child's peak
memory. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from run_bench import DATA, generate, synthetic_dataset  # noqa: E402

from sandbox.engine import build_in_child  # noqa: E402
from sandbox.policy.models import Dataset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--memory", default="4GB")
    ap.add_argument("--max-rows-per-unit", type=int, default=2, help="bound (the data has 1-5 rows per unit)")
    args = ap.parse_args()
    src = DATA / f"synthetic-{args.rows}.parquet"
    generate(src, args.rows)
    spec = synthetic_dataset()
    spec["source"] = src.name
    spec["max_rows_per_unit"] = args.max_rows_per_unit
    ds = Dataset.model_validate(spec)
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "engine" / "catalog.duckdb"
        target.parent.mkdir()
        report = build_in_child({ds.id: ds}, DATA, target, print, args.memory, key=secrets.token_bytes(32))
    print(f"{args.rows:,} rows, bound {args.max_rows_per_unit}: kept {report.kept[ds.id]:,}; "
          f"build {report.seconds:.1f} s, child peak memory {report.peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
