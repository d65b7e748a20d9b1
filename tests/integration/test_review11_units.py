"""COUNT(DISTINCT unit) after WHERE, GROUP BY and joins, and partition selection's unit counts.

The representative row of each unit used to be fixed at build time (``__unit_first``), so a unit
whose representative failed WHERE, or fell in another group, was not counted: answers were wrong.
The engine now counts distinct units (keyed hashes) of the rows that pass, per group, and the
sensitivity is what one unit can move: min(max_rows_per_unit, number of groups). Checked against
exact counts computed by DuckDB directly on the raw Parquet.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_joins import _world

from sandbox.dp import selection
from sandbox.dp.planner import SELECT, Primitive, plan_dp
from sandbox.engine import Engine
from sandbox.policy.models import Dataset
from sandbox.sql._join import joined_dataset
from sandbox.sql.analyze import analyze

K = 3
VISITS = Dataset(
    id="visits", title="visits", source="visits.parquet", classification="L2", privacy_unit="pid",
    max_rows_per_unit=K,
    columns={"pid": {"type": "id"}, "ward": {"type": "category", "values": ["a", "b", "c", "d"]},
             "cost": {"type": "int", "bounds": [0, 100]}, "city": {"type": "text"}},
)


def _data(root: Path) -> Path:
    """300 units of 1 to 3 rows (never over the bound, so raw and bounded data agree), rows of one
    unit spread over wards, costs and cities."""
    pids, wards, costs, cities = [], [], [], []
    for u in range(300):
        for i in range(1 + u % 3):
            pids.append(f"u{u}")
            wards.append("abcd"[(u + i) % 4])
            costs.append((u * 7 + i * 13) % 60)
            cities.append(["x", "y", "z"][(u + 2 * i) % 3])
    root.mkdir(parents=True, exist_ok=True)
    path = root / "visits.parquet"
    pq.write_table(pa.table({"pid": pids, "ward": wards, "cost": costs, "city": cities}), path)
    return path


def _exact(engine: Engine, sql: str, dataset: Dataset = VISITS) -> dict:
    granted = {"visits": {"ward", "cost", "city"}}
    plan = plan_dp(analyze(sql, {"visits": dataset}, granted), dataset, 1.0, delta=1e-7)
    return {key: {p.label: v for p, v in values.items()} for key, values in engine.exact(plan).items()}


@pytest.fixture
def engine(tmp_path: Path) -> tuple[Engine, Path]:
    path = _data(tmp_path / "data")
    eng = Engine(tmp_path / "data", tmp_path / "engine")
    eng.ensure({"visits": VISITS})
    return eng, path


@pytest.mark.parametrize(("where", "group"), [
    ("cost > 30", None), ("cost < 10 OR cost > 50", None), (None, "ward"), ("cost >= 20", "ward"),
])
def test_distinct_units_match_duckdb_on_the_raw_file(engine, where: str | None, group: str | None) -> None:  # noqa: ANN001
    eng, path = engine
    clause = f" WHERE {where}" if where else ""
    select = f"{group}, " if group else ""
    by = f" GROUP BY {group}" if group else ""
    got = _exact(eng, f"SELECT {select}COUNT(DISTINCT pid) AS u FROM visits{clause}{by}")
    raw = duckdb.sql(f"SELECT {select}COUNT(DISTINCT pid) FROM read_parquet('{path}'){clause}{by}").fetchall()
    truth = {tuple(r[:-1]): r[-1] for r in raw}
    assert {k: v["units(*)"] for k, v in got.items() if v["units(*)"]} == truth


def test_partition_selection_counts_units_per_key(engine) -> None:  # noqa: ANN001
    eng, path = engine
    got = _exact(eng, "SELECT city, COUNT(*) AS n FROM visits WHERE cost > 25 GROUP BY city")
    raw = duckdb.sql(f"SELECT city, COUNT(DISTINCT pid) FROM read_parquet('{path}') WHERE cost > 25 "
                     "GROUP BY city").fetchall()
    assert {k: v["select(*)"] for k, v in got.items()} == {(c,): n for c, n in raw}


def test_the_sensitivity_is_what_one_unit_can_move() -> None:
    granted = {"visits": {"ward", "cost", "city"}}
    units = Primitive("units", None)

    def plan(sql: str, k: int = K):  # noqa: ANN202
        ds = VISITS.model_copy(update={"max_rows_per_unit": k})
        return plan_dp(analyze(sql, {"visits": ds}, granted), ds, 1.0, delta=1e-7)

    assert plan("SELECT COUNT(DISTINCT pid) FROM visits").sensitivity(units) == 1
    assert plan("SELECT ward, COUNT(DISTINCT pid) FROM visits GROUP BY ward").sensitivity(units) == K  # 4 wards
    assert plan("SELECT ward, COUNT(DISTINCT pid) FROM visits GROUP BY ward", k=10).sensitivity(units) == 4
    assert plan("SELECT ward, COUNT(DISTINCT pid) FROM visits GROUP BY ward", k=1).sensitivity(units) == 1
    selecting = plan("SELECT city, COUNT(*) FROM visits GROUP BY city")
    assert selecting.sensitivity(SELECT) == K
    # the threshold is calibrated for a unit in K keys: higher than for one key, and the scale K / epsilon
    assert selection.calibrate(selecting.epsilon_each, 1e-7, K)[0] == pytest.approx(K / selecting.epsilon_each)
    assert selecting.scale(SELECT) == pytest.approx(K / selecting.epsilon_each)
    assert selection.calibrate(0.5, 1e-7, K)[1] > selection.calibrate(0.5, 1e-7, 1)[1]


def test_distinct_units_after_a_lookup_join(tmp_path: Path) -> None:
    _client, _headers, services = _world(tmp_path)
    catalog = services.policies.datasets()
    granted = {"visits": {"region", "cost"}, "regions": {"code", "name", "pop"}}
    sql = ("SELECT r.name, COUNT(DISTINCT v.pid) AS u FROM visits v JOIN regions r ON v.region = r.code "
           "WHERE v.cost > 10 GROUP BY r.name")
    plan = plan_dp(analyze(sql, catalog, granted), joined_dataset(catalog["visits"], catalog["regions"]), 1.0)
    got = {k: v[Primitive("units", None)] for k, v in services.engine.exact(plan).items()}
    data = tmp_path / "data"
    raw = duckdb.sql(
        f"SELECT r.name, COUNT(DISTINCT v.pid) FROM read_parquet('{data / 'visits.parquet'}') v "
        f"JOIN read_parquet('{data / 'regions.parquet'}') r ON v.region = r.code WHERE v.cost > 10 GROUP BY r.name"
    ).fetchall()
    assert {k: n for k, n in got.items() if n} == {(name,): n for name, n in raw}
