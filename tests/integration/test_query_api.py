"""The query API through the real Flask app, real SQLite state, real DuckDB, real OpenDP."""

from __future__ import annotations

import datetime as dt
import json
import math

import duckdb
import pyarrow as pa
import pytest

from sandbox.services import Services

Q = "SELECT sex, COUNT(*) AS n, AVG(age) AS mean_age FROM nhanes_2017 GROUP BY sex"
GRANT = "g-2026-001"


def ask(client, headers, sql=Q, epsilon=0.5, **extra):  # noqa: ANN001, ANN201
    return client.post("/v1/query", json={"sql": sql, "epsilon": epsilon, "grant": GRANT, **extra}, headers=headers)


def test_catalog_shows_only_granted_metadata(client, alice) -> None:  # noqa: ANN001
    body = client.get("/v1/catalog", headers=alice).get_json()
    nhanes = next(d for d in body["datasets"] if d["dataset"] == "nhanes_2017")
    names = [c["name"] for c in nhanes["columns"]]
    assert "seqn" not in names and "total_cholesterol" not in names
    assert "age" in names and nhanes["privacy_unit"] == "seqn"
    assert "rows" not in body and all("rows" not in d for d in body["datasets"])


def test_query_answers_with_noise_accuracy_and_budget(client, alice, services: Services, demo_data_root) -> None:  # noqa: ANN001
    r = ask(client, alice)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["columns"] == ["sex", "n", "mean_age"]
    assert [row[0] for row in body["rows"]] == ["male", "female"]
    assert body["epsilon_spent"] == 0.5 and body["cached"] is False
    assert body["budget"] == {"epsilon_total": 10.0, "epsilon_spent": 0.5, "epsilon_remaining": 9.5}
    ci = body["accuracy"]["ci_halfwidth"]
    assert body["accuracy"]["alpha"] == 0.05 and ci["n"] > 0 and ci["mean_age"] > 0
    truth = dict(duckdb.sql(
        f"SELECT sex, COUNT(*) FROM '{demo_data_root}/nhanes_2017.parquet' GROUP BY sex").fetchall())
    for sex, n, _ in body["rows"]:
        assert abs(n - truth[sex]) <= 4 * ci["n"]  # fails with probability far below 1e-6
    entries = list(services.audit.entries())
    assert [e["action"] for e in entries][-2:] == ["query.charged", "query.answered"]
    assert entries[-1]["detail"]["answer_sha256"] == body["answer_sha256"]


def test_every_declared_key_is_released_even_when_empty(client, alice) -> None:  # noqa: ANN001
    sql = "SELECT general_health, COUNT(*) AS n FROM nhanes_2017 WHERE age < 0 GROUP BY general_health"
    body = ask(client, alice, sql).get_json()
    assert [r[0] for r in body["rows"]] == ["excellent", "very_good", "good", "fair", "poor"]
    # nothing matches age < 0: every released count is pure noise around 0
    assert all(abs(r[1]) <= 6 * body["accuracy"]["ci_halfwidth"]["n"] for r in body["rows"])


def test_bins_order_limit(client, alice) -> None:  # noqa: ANN001
    sql = (
        "SELECT FLOOR(age / 10) * 10 AS decade, COUNT(*) AS n FROM nhanes_2017"
        " GROUP BY decade ORDER BY n DESC LIMIT 3"
    )
    body = ask(client, alice, sql).get_json()
    assert len(body["rows"]) == 3
    assert body["rows"][0][1] >= body["rows"][1][1] >= body["rows"][2][1]
    assert all(r[0] in range(0, 90, 10) for r in body["rows"])


def test_sum_without_count_and_row_level_dataset(client, alice) -> None:  # noqa: ANN001
    body = ask(client, alice, "SELECT income, SUM(hours_per_week) AS h FROM adult_income GROUP BY income").get_json()
    assert body["columns"] == ["income", "h"] and len(body["rows"]) == 2


def test_identical_query_replays_cached_answer_for_free(client, alice) -> None:  # noqa: ANN001
    first = ask(client, alice).get_json()
    again = ask(client, alice, Q.replace(" FROM", "\n  from").replace("COUNT", "count")).get_json()
    assert again["cached"] is True and again["epsilon_spent"] == 0.0
    assert again["rows"] == first["rows"] and again["query_id"] == first["query_id"]
    assert again["budget"]["epsilon_spent"] == 0.5
    other_eps = ask(client, alice, epsilon=0.25).get_json()
    assert other_eps["cached"] is False and other_eps["budget"]["epsilon_spent"] == 0.75


def test_arrow_response(client, alice) -> None:  # noqa: ANN001
    r = client.post("/v1/query", json={"sql": Q, "epsilon": 0.5, "grant": GRANT},
                    headers={**alice, "Accept": "application/vnd.apache.arrow.stream"})
    assert r.mimetype == "application/vnd.apache.arrow.stream"
    table = pa.ipc.open_stream(r.data).read_all()
    assert table.column_names == ["sex", "n", "mean_age"] and table.num_rows == 2
    meta = json.loads(table.schema.metadata[b"sandbox"])
    assert meta["epsilon_spent"] == 0.5 and "ci_halfwidth" in meta["accuracy"]


def test_budget_exhausted_is_409_and_changes_nothing(client, alice, services: Services) -> None:  # noqa: ANN001
    for i in range(10):
        assert ask(client, alice, f"SELECT COUNT(*) AS n{i} FROM nhanes_2017", epsilon=1.0).status_code == 200
    before = services.ledger.state(GRANT)
    r = ask(client, alice, "SELECT COUNT(*) AS last FROM nhanes_2017", epsilon=0.001)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "budget_exhausted"
    assert services.ledger.state(GRANT) == before
    assert client.get("/v1/budget", headers=alice).get_json()["grants"][0]["epsilon_remaining"] == 0.0


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"sql": Q, "epsilon": "0.5", "grant": GRANT}, "bad_epsilon"),
        ({"sql": Q, "epsilon": -1, "grant": GRANT}, "bad_epsilon"),
        ({"sql": Q, "epsilon": 0, "grant": GRANT}, "bad_epsilon"),
        ({"sql": Q, "epsilon": True, "grant": GRANT}, "bad_epsilon"),
        ({"sql": Q, "grant": GRANT}, "bad_epsilon"),
        ({"sql": Q, "epsilon": 1e-12, "grant": GRANT}, "bad_epsilon"),
        ({"sql": Q, "epsilon": 2.0, "grant": GRANT}, "epsilon_over_cap"),
        ({"sql": "", "epsilon": 0.5, "grant": GRANT}, "empty_query"),
        ({"sql": ["x"], "epsilon": 0.5, "grant": GRANT}, "empty_query"),
        ({"sql": "SELECT COUNT(*) FROM nhanes_2017 " + " " * 9000, "epsilon": 0.5, "grant": GRANT}, "sql_too_long"),
        ({"sql": Q, "epsilon": 0.5, "grant": GRANT, "limit": 5}, "unknown_field"),
        ({"sql": Q, "epsilon": 0.5, "grant": 7}, "bad_grant"),
        ([1, 2], "bad_json"),
    ],
)
def test_bad_parameters_are_400(client, alice, body, code) -> None:  # noqa: ANN001
    r = client.post("/v1/query", json=body, headers=alice)
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["error"]["code"] == code


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_epsilon_is_400(client, alice, raw) -> None:  # noqa: ANN001
    data = f'{{"sql": "SELECT COUNT(*) FROM nhanes_2017", "epsilon": {raw}, "grant": "g-2026-001"}}'
    r = client.post("/v1/query", data=data, content_type="application/json", headers=alice)
    assert r.status_code == 400 and r.get_json()["error"]["code"] in ("bad_epsilon", "bad_json")


def test_malformed_json_and_content_type(client, alice) -> None:  # noqa: ANN001
    r = client.post("/v1/query", data="{not json", content_type="application/json", headers=alice)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "bad_json"
    r = client.post("/v1/query", data="sql=x", content_type="application/x-www-form-urlencoded", headers=alice)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "bad_content_type"
    r = client.post("/v1/query", data="x" * 70_000, content_type="application/json", headers=alice)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "body_too_large"


def test_auth_401_and_403(client, alice, mallory) -> None:  # noqa: ANN001
    assert client.post("/v1/query", json={"sql": Q, "epsilon": 0.5}).status_code == 401
    r = client.post("/v1/query", json={"sql": Q, "epsilon": 0.5}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "unauthorized"
    r = ask(client, mallory)
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "not_a_member"
    r = ask(client, alice, grant="g-does-not-exist")
    assert r.status_code == 403
    r = ask(client, alice, "SELECT marital_status, COUNT(*) FROM nhanes_2017 GROUP BY marital_status")
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "column_not_granted"


def test_refusals_are_audited(client, alice, services: Services) -> None:  # noqa: ANN001
    ask(client, alice, "SELECT seqn FROM nhanes_2017")
    last = list(services.audit.entries())[-1]
    assert last["action"] == "query.refused" and last["actor"] == "alice"
    assert last["detail"]["sql"] == "SELECT seqn FROM nhanes_2017" and last["detail"]["code"]


def test_suspension_and_revocation_take_effect_on_next_request(client, alice, services: Services) -> None:  # noqa: ANN001
    assert ask(client, alice).status_code == 200
    services.policies.set_status(GRANT, "suspended", "admin", "audit pending")
    r = ask(client, alice)
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "grant_suspended"
    services.policies.set_status(GRANT, "active", "admin")
    assert ask(client, alice, epsilon=0.1).status_code == 200
    services.policies.set_status(GRANT, "revoked", "admin", "breach")
    assert ask(client, alice).get_json()["error"]["code"] == "grant_revoked"


def test_expiry_takes_effect_without_any_command(client, alice, services: Services) -> None:  # noqa: ANN001
    services.settings.today = lambda: dt.date(2028, 1, 1)
    r = ask(client, alice)
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "grant_expired"


def test_restart_keeps_budget_and_audit(client, alice, services: Services) -> None:  # noqa: ANN001
    ask(client, alice)
    ask(client, alice, epsilon=0.3)
    spent = services.ledger.state(GRANT).epsilon_spent
    n = services.audit.verify().entries
    services.db.close()
    again = Services(services.settings)
    assert again.ledger.state(GRANT).epsilon_spent == spent == 0.8
    result = again.audit.verify()
    assert result.ok and result.entries == n


def test_ci_halfwidth_is_finite_for_every_noisy_column(client, alice) -> None:  # noqa: ANN001
    sql = "SELECT race, COUNT(*) AS n, SUM(income_ratio) AS s, AVG(weight_kg) AS w FROM nhanes_2017 GROUP BY race"
    body = ask(client, alice, sql).get_json()
    ci = body["accuracy"]["ci_halfwidth"]
    assert set(ci) == {"n", "s", "w"} and all(math.isfinite(v) and v > 0 for v in ci.values())


def test_float_bins_match_every_row(client, alice, demo_data_root) -> None:  # noqa: ANN001
    """Float bin keys computed by the engine land in the public domain (none silently dropped)."""
    sql = "SELECT FLOOR(income_ratio / 0.1) * 0.1 AS b, COUNT(*) AS n FROM nhanes_2017 GROUP BY b"
    body = ask(client, alice, sql, epsilon=1.0).get_json()
    assert len(body["rows"]) == 51 and body["rows"][3][0] == 0.3
    total = sum(r[1] for r in body["rows"])
    truth = duckdb.sql(
        f"SELECT COUNT(income_ratio) FROM '{demo_data_root}/nhanes_2017.parquet'").fetchall()[0][0]
    # 51 noisy cells with scale 1: the sum is within a few dozen of the true non-null count
    assert abs(total - truth) < 80
