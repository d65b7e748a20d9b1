"""People, not rows: COUNT(DISTINCT <privacy unit>) counts each unit once per group (sensitivity 1
without GROUP BY, min(max_rows_per_unit, groups) with it).

A real engine is built from a small Parquet file in which units hold 1 to 50 rows (bound 3);
the exact unit counts must move by exactly 1 when a unit with many rows is added (by at most the
number of groups its kept rows fall in, with GROUP BY). Through the gateway, the demo data's
people are counted near the truth, and the id is never returned or usable elsewhere.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sandbox.bounding import KEY_FILE
from sandbox.dp.planner import plan_dp
from sandbox.engine import Engine
from sandbox.policy.models import Dataset
from sandbox.sql.analyze import analyze

GRANT = "g-2026-001"
VISITS = Dataset(
    id="visits", title="visits", source="visits.parquet", classification="L2", privacy_unit="pid",
    max_rows_per_unit=3,
    columns={"pid": {"type": "id"}, "ward": {"type": "category", "values": ["a", "b"]},
             "cost": {"type": "int", "bounds": [0, 100]}},
)


def _write(root: Path, rows: dict[str, int]) -> None:
    pids, wards, costs = [], [], []
    for pid, n in rows.items():
        for i in range(n):
            pids.append(pid)
            wards.append("a" if i % 2 == 0 else "b")
            costs.append(10 + i)
    pq.write_table(pa.table({"pid": pids, "ward": wards, "cost": costs}), root / "visits.parquet")


def _exact(tmp: Path, rows: dict[str, int], sql: str, key_from: Path | None = None) -> dict:
    """Exact aggregates of an engine built from ``rows``; ``key_from``: reuse that build's bounding key
    (neighbouring datasets are compared under one key, as one gateway builds them)."""
    data = tmp / "data"
    data.mkdir(parents=True, exist_ok=True)
    _write(data, rows)
    if key_from is not None:
        (tmp / "engine").mkdir(parents=True, exist_ok=True)
        shutil.copy2(key_from / "engine" / KEY_FILE, tmp / "engine" / KEY_FILE)
    engine = Engine(data, tmp / "engine")
    engine.ensure({"visits": VISITS})
    plan = plan_dp(analyze(sql, {"visits": VISITS}, {"visits": {"ward", "cost"}}), VISITS, 1.0)
    return {key: {p.label: v for p, v in values.items()} for key, values in engine.exact(plan).items()}


def test_each_unit_counts_once_however_many_rows(tmp_path: Path) -> None:
    base = {"u1": 1, "u2": 2, "u3": 5, "u4": 1}
    sql = "SELECT COUNT(DISTINCT pid) AS people, COUNT(*) AS n FROM visits"
    before = _exact(tmp_path / "1", base, sql)[()]
    assert before == {"units(*)": 4, "count(*)": 1 + 2 + 3 + 1}
    # the attack: one unit with 50 rows. Rows are bounded to 3; people moves by exactly 1
    after = _exact(tmp_path / "2", {**base, "u5": 50}, sql)[()]
    assert after == {"units(*)": 5, "count(*)": 10}


def test_units_split_across_groups_count_in_each_group(tmp_path: Path) -> None:
    rows = {"u1": 1, "u2": 2, "u3": 5, "u4": 3, "u5": 50}  # u2..u5 have (kept) rows in both wards
    out = _exact(tmp_path, rows, "SELECT ward, COUNT(DISTINCT pid) AS people FROM visits GROUP BY ward")
    before = sum(v["units(*)"] for v in out.values())
    assert 5 < before <= 9 and all(v["units(*)"] <= 5 for v in out.values())  # distinct people per ward
    # one more unit moves the groups by at most min(bound 3, 2 wards) = 2, the sensitivity used
    more = _exact(tmp_path / "x", {**rows, "u6": 40}, "SELECT ward, COUNT(DISTINCT pid) FROM visits GROUP BY ward",
                  key_from=tmp_path)
    assert sum(v["units(*)"] for v in more.values()) - before in (1, 2)
    plan = plan_dp(analyze("SELECT ward, COUNT(DISTINCT pid) FROM visits GROUP BY ward", {"visits": VISITS},
                           {"visits": {"ward"}}), VISITS, 1.0)
    assert plan.unit_groups == 2


def test_people_through_the_gateway(client, alice, demo_data_root) -> None:  # noqa: ANN001
    sql = "SELECT sex, COUNT(DISTINCT seqn) AS people, COUNT(*) AS n FROM nhanes_2017 WHERE age >= 18 GROUP BY sex"
    resp = client.post("/v1/query", headers=alice, json={"sql": sql, "epsilon": 1.0, "grant": GRANT})
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    truth = dict(duckdb.sql(f"SELECT sex, COUNT(DISTINCT seqn) FROM '{demo_data_root}/nhanes_2017.parquet' "
                            "WHERE age >= 18 GROUP BY sex").fetchall())
    ci = body["accuracy"]["ci_halfwidth"]["people"]
    assert ci < 10  # sensitivity 1 at epsilon 0.5 each: a half-width of a few people
    for sex, people, _n in body["rows"]:
        assert abs(people - truth[sex]) <= 2 * ci
    assert body["mechanism"]["scales"]["units(*)"] == pytest.approx(1 / 0.5)
    ids = {str(r[0]) for r in duckdb.sql(f"SELECT seqn FROM '{demo_data_root}/nhanes_2017.parquet'").fetchall()}
    assert not ids & {str(v) for row in body["rows"] for v in row}


@pytest.mark.parametrize(
    ("sql", "code"),
    [
        ("SELECT seqn, COUNT(DISTINCT seqn) FROM nhanes_2017 GROUP BY seqn", "id_column"),
        ("SELECT COUNT(DISTINCT seqn) FROM nhanes_2017 WHERE seqn = 93703", "id_column"),
        ("SELECT COUNT(DISTINCT seqn) AS p FROM nhanes_2017 GROUP BY seqn", "id_column"),
        ("SELECT SUM(DISTINCT seqn) FROM nhanes_2017", "distinct_not_allowed"),
        ("SELECT COUNT(seqn) FROM nhanes_2017", "id_column"),
        ("SELECT COUNT(DISTINCT seqn + 0) FROM nhanes_2017", "distinct_not_allowed"),
        ("SELECT COUNT(DISTINCT age) FROM nhanes_2017", "distinct_not_allowed"),
        ("SELECT COUNT(DISTINCT age) FROM adult_income", "distinct_not_allowed"),
        ("SELECT age, AVG(weight_kg) FROM nhanes_2017 GROUP BY age HAVING COUNT(DISTINCT seqn) > 1",
         "having_not_selected"),
    ],
)
def test_the_id_is_usable_nowhere_else(client, alice, sql: str, code: str) -> None:  # noqa: ANN001
    resp = client.post("/v1/query", headers=alice, json={"sql": sql, "epsilon": 0.1, "grant": GRANT})
    assert resp.status_code == 400, resp.get_json()
    assert resp.get_json()["error"]["code"] == code
