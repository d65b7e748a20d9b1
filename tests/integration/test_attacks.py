"""Attack tests: queries that try to get raw rows or identities out must fail or stay noisy."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import duckdb
import pytest

from sandbox.policy.models import Dataset
from sandbox.services import Services

GRANT = "g-2026-001"

EXFILTRATION = [
    "SELECT * FROM nhanes_2017",
    "SELECT age FROM nhanes_2017",
    "SELECT seqn, COUNT(*) FROM nhanes_2017 GROUP BY seqn",
    "SELECT COUNT(*) FROM nhanes_2017 WHERE seqn = 93703",
    "SELECT QUANTILE_DISC(age, 1.0) FROM nhanes_2017",  # exact extremes (DP MIN/MAX are tested in test_dp_quantiles)
    "SELECT ARG_MAX(weight_kg, age) FROM nhanes_2017",
    "SELECT MAX(seqn) FROM nhanes_2017",
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
    l3 = Dataset.model_validate({**ds.model_dump(), "classification": "L3", "budget": {"epsilon": 50}})
    services.policies.apply_dataset(l3, "admin")
    r = client.post("/v1/query", json={"sql": "SELECT COUNT(*) FROM nhanes_2017", "epsilon": 0.5, "grant": GRANT},
                    headers=alice)
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "grant_out_of_policy"


# -- regressions from the independent review ---------------------------------------------------
TARGET = "height_cm = 165.1 AND weight_kg = 97.1"  # a unique person in the demo data


@pytest.mark.parametrize(
    "bomb",
    [
        "age * 4611686018427387904 * 4 > 0",  # INT64 overflow only on rows that reach it
        "age * 1.0 * 99999999999999999999999999999999999.9 > 0",  # DECIMAL overflow
        "age / 0 > 1",
    ],
)
@pytest.mark.parametrize("threshold", ["4.0", "4.99"])
def test_engine_errors_cannot_answer_membership(client, alice, bomb: str, threshold: str) -> None:  # noqa: ANN001
    """Whether a query fails must not depend on the data: both thresholds answer 200."""
    sql = f"SELECT COUNT(*) AS n FROM nhanes_2017 WHERE {TARGET} AND income_ratio < {threshold} AND {bomb}"
    r = client.post("/v1/query", json={"sql": sql, "epsilon": 0.01, "grant": GRANT}, headers=alice)
    assert r.status_code == 200, r.get_json()


def test_avg_ignores_missing_values(client, alice, demo_data_root) -> None:  # noqa: ANN001
    """NULLs are left out of SUM as they are of COUNT(col) (not clamped to the lower bound)."""
    body = client.post("/v1/query", json={"sql": "SELECT AVG(height_cm) AS h FROM nhanes_2017", "epsilon": 1.0,
                                          "grant": GRANT}, headers=alice).get_json()
    truth = duckdb.sql(f"SELECT AVG(height_cm) FROM '{demo_data_root}/nhanes_2017.parquet'").fetchall()[0][0]
    assert abs(body["rows"][0][0] - truth) <= body["accuracy"]["ci_halfwidth"]["h"] * 3


def test_identifier_check_is_not_a_membership_oracle_for_requesters(client, alice, services: Services) -> None:  # noqa: ANN001
    import io

    carol = {"Authorization": f"Bearer {services.tokens.create('carol')}"}
    views = {}
    for seqn in ("93703", "93702"):  # in the data / not in the data
        data = {"grant": GRANT, "title": "ids", "justification": "probe",
                "files": (io.BytesIO(f"person_ref,value\n{seqn},1\n".encode()), "p.csv")}
        r = client.post("/v1/exports", data=data, headers=alice, content_type="multipart/form-data")
        assert r.status_code == 201, r.get_json()
        mine = r.get_json()["files"][0]
        views[seqn] = next(c for c in mine["checks"] if c["rule"] == "identifiers")
        reviewer = client.get(f"/v1/exports/{r.get_json()['id']}", headers=carol).get_json()
        assert "shown to reviewers only" not in str(reviewer)
    assert views["93703"] == views["93702"]  # the requester learns nothing
    assert "reviewers only" in views["93703"]["detail"]


@pytest.mark.parametrize(
    "raw",
    [
        '{"sql": "SELECT COUNT(*) FROM nhanes_2017", "epsilon": 1e300, "grant": "g-2026-001"}',
        '{"sql": "SELECT COUNT(*) FROM nhanes_2017", "epsilon": ' + "9" * 400 + ', "grant": "g-2026-001"}',
        "[" * 30000,
        '{"sql": "SELECT COUNT(*) FROM nhanes_2017 \\ud800", "epsilon": 0.5, "grant": "g-2026-001"}',
        '{"sql": "SELECT COUNT(*) FROM nhanes_2017", "epsilon": 0.5, "grant": "g-\\ud800"}',
    ],
)
def test_hostile_bodies_are_400_not_500(client, alice, raw: str) -> None:  # noqa: ANN001
    r = client.post("/v1/query", data=raw, content_type="application/json", headers=alice)
    assert r.status_code == 400, r.get_json()


def test_huge_number_in_export_is_not_500(client, alice) -> None:  # noqa: ANN001
    import io

    data = {"grant": GRANT, "title": "big", "justification": "x",
            "files": (io.BytesIO(("group,n\na," + "9" * 400 + "\n").encode()), "big.csv")}
    r = client.post("/v1/exports", data=data, headers=alice, content_type="multipart/form-data")
    assert r.status_code in (201, 400)


def test_budget_tampering_and_missing_head_are_detected(client, alice, services: Services) -> None:  # noqa: ANN001
    client.post("/v1/query", json={"sql": "SELECT COUNT(*) FROM nhanes_2017", "epsilon": 0.5, "grant": GRANT},
                headers=alice)
    assert services.ledger.reconcile() == []
    with pytest.raises(sqlite3.DatabaseError, match="not authorized"):  # not through the gateway's connections
        services.db.conn.execute("UPDATE budgets SET epsilon_spent_nano = 0")
    with closing(sqlite3.connect(services.db.path, isolation_level=None)) as raw:  # the attacker's own
        raw.execute("UPDATE budgets SET epsilon_spent_nano = 0")
        raw.execute("DELETE FROM audit_head")
    assert any("charges add up" in p for p in services.ledger.reconcile())
    assert any("head is missing" in p for p in services.audit.verify().problems)
