"""No SQL is executed outside sandbox/state/: the state database is read and written only through
its repositories (issue 10). The gateway's analytical engine is DuckDB, not the state: the few
files that run DuckDB (or a benchmark's own SQL engine) are allowed below, each with its reason."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ["sandbox", "gateway", "bench", "hub_config.py"]
STATE = Path("sandbox/state")
EXECUTION = re.compile(r"\.execute\(|\.executemany\(|\.executescript\(|\bdb\.read\(")

ALLOWED = {
    # DuckDB, over the views the engine builds itself from the Parquet (never the state database)
    "sandbox/engine.py": "the query engine's DuckDB",
    "sandbox/engine_build.py": "DuckDB building the engine file from the Parquet (in the import child)",
    # DuckDB writing the demo Parquet files (`sandbox demo-data`): no state database involved
    "sandbox/demo_data.py": "DuckDB building the demo data",
    # benchmarks: DuckDB baselines and SmartNoise SQL readers over in-memory data
    "bench/run_bench.py": "benchmark baseline in DuckDB",
    "bench/concurrency.py": "benchmark baseline in DuckDB",
    "bench/scale_100m.py": "benchmark baseline in DuckDB",
    "bench/accuracy_bench.py": "SmartNoise SQL reader (a comparison baseline)",
}


def _python_files() -> list[Path]:
    files: list[Path] = []
    for name in SCANNED:
        path = ROOT / name
        files.extend([path] if path.is_file() else sorted(path.rglob("*.py")))
    return [f for f in files if not f.relative_to(ROOT).is_relative_to(STATE)]


def test_no_sql_is_executed_outside_the_state_repositories() -> None:
    found = []
    for path in _python_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel in ALLOWED:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if EXECUTION.search(line):
                found.append(f"{rel}:{number}: {line.strip()}")
    assert not found, "SQL executed outside sandbox/state/ (use a repository there):\n" + "\n".join(found)


def test_the_allow_list_is_still_needed() -> None:
    """An allowed file that no longer executes SQL leaves the list (so the list cannot hide new code)."""
    for rel in ALLOWED:
        text = (ROOT / rel).read_text(encoding="utf-8")
        assert EXECUTION.search(text), f"{rel} runs no SQL any more: remove it from ALLOWED"


def test_the_scan_sees_the_code() -> None:
    rels = {p.relative_to(ROOT).as_posix() for p in _python_files()}
    assert {"sandbox/monitoring.py", "sandbox/exports/store.py", "gateway/app.py"} <= rels
    assert not any(r.startswith("sandbox/state/") for r in rels)
