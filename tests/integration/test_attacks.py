"""Attack tests: queries that try to get raw rows or identities out must fail or stay noisy."""

from __future__ import annotations

import duckdb
import pytest

from sandbox.services import Services

GRANT = "g-2026-001"

EXFILTRATION = [
    "SELECT * FROM nhanes_2017",
    "SELECT age FROM nhanes_2017",
    "SELECT seqn, COUNT(*) FROM nhanes_2017 GROUP BY seqn",
    "SELECT COUNT(*) FROM nhanes_2017 WHERE seqn = 93703",
    "SELECT MIN(age), MAX(age) FROM nhanes_2017",
    "SELECT STRING_AGG(sex, ',') FROM nhanes_2017",
    "SELECT LIST(age) FROM nhanes_2017",
    "SELECT COUNT(*) FROM read_parquet('nhanes_2017.parquet')",
    "SELECT COUNT(*) FROM 'nhanes_2017.parquet'",
    "COPY nhanes_2017 TO 'out.csv'",
    "ATTACH 'x.duckdb' AS x",
    "SELECT COUNT(*) FROM (SELECT * FROM nhanes_2017 LIMIT 1)",
    "WITH t AS (SELECT age FROM nhanes_2017) SELECT COUNT(*) FROM t",
    "SELECT age, COUNT(*) OVER () FROM nhanes_2017",
    "SELECT COUNT(*) FROM nhanes_2017; SELECT * FROM nhanes_2017",
    "SELECT weight_kg, COUNT(*) FROM nhanes_2017 GROUP BY weight_kg",
    "SELECT COUNT(*) FROM nhanes_2017 WHERE age IN (SELECT age FROM nhanes_2017)",
    "SELECT COUNT(*) FROM information_schema.tables",
    "SELECT COUNT(*) FROM duckdb_settings()",
    "SELECT current_setting('memory_limit'), COUNT(*) FROM nhanes_2017",
    "SELECT SUM(age) / COUNT(*) FROM nhanes_2017",
    "SELECT COUNT(*) FROM __ids_nhanes_2017",
    "SELECT SUM(__v_age) FROM nhanes_2017",
]


@pytest.mark.parametrize("sql", EXFILTRATION)
def test_exfiltration_attempts_refused_and_free(client, alice, services: Services, sql: str) -> None:  # noqa: ANN001
    r = client.post("/v1/query", json={"sql": sql, "epsilon": 0.5, "grant": GRANT}, headers=alice)
    assert r.status_code in (400, 403), (sql, r.get_json())
    assert "rows" not in r.get_json()
    assert services.ledger.state(GRANT).epsilon_spent == 0.0


def test_repetition_does_not_average_noise_away(client, alice, services: Services) -> None:  # noqa: ANN001
    sql = "SELECT COUNT(*) AS n FROM nhanes_2017 WHERE age = 80 AND sex = 'female'"
    body = {"sql": sql, "epsilon": 0.1, "grant": GRANT}
    answers = {client.post("/v1/query", json=body, headers=alice).get_json()["rows"][0][0] for _ in range(25)}
    assert len(answers) == 1  # the same noisy answer, replayed
    assert services.ledger.state(GRANT).epsilon_spent == pytest.approx(0.1)


def test_variants_pay_and_the_budget_caps_them(client, alice) -> None:  # noqa: ANN001
    statuses = []
    for i in range(12):
        sql = f"SELECT COUNT(*) AS n FROM nhanes_2017 WHERE age = 80 AND sex = 'female' AND age > -{i + 1}"
        statuses.append(client.post("/v1/query", json={"sql": sql, "epsilon": 1.0, "grant": GRANT},
                                    headers=alice).status_code)
    assert statuses[:10] == [200] * 10 and statuses[10:] == [409, 409]


def test_engine_is_locked_even_if_reached(services: Services, demo_data_root) -> None:  # noqa: ANN001
    cur = services.engine._cursor()
    for stmt in [
        f"SELECT * FROM read_parquet('{demo_data_root}/nhanes_2017.parquet')",
        f"COPY nhanes_2017 TO '{demo_data_root}/leak.csv'",
        f"ATTACH '{demo_data_root}/x.duckdb' AS x",
        "CREATE TABLE t AS SELECT 1",
        "INSTALL httpfs",
        "SET enable_external_access = true",
        f"SELECT * FROM glob('{demo_data_root}/*')",
    ]:
        with pytest.raises(duckdb.Error):
            cur.execute(stmt)
    assert not (demo_data_root / "leak.csv").exists()


def test_engine_file_holds_no_identifiers(services: Services) -> None:
    cols = [r[0] for r in services.engine._cursor().execute("DESCRIBE nhanes_2017").fetchall()]
    assert "seqn" not in cols and "sex" in cols and "__v_age" in cols


def test_reclassified_dataset_is_refused_at_query_time(client, alice, services: Services) -> None:  # noqa: ANN001
    ds = services.policies.datasets()["nhanes_2017"]
    services.policies.apply_dataset(ds.model_copy(update={"classification": "L3"}), "admin")
    r = client.post("/v1/query", json={"sql": "SELECT COUNT(*) FROM nhanes_2017", "epsilon": 0.5, "grant": GRANT},
                    headers=alice)
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "grant_out_of_policy"
