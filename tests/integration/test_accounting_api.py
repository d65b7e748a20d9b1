"""Versioned answers, zCDP grants and free plans through the real Flask app, SQLite, DuckDB and OpenDP."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from sandbox.policy.models import Grant
from sandbox.services import Services

REPO = Path(__file__).resolve().parents[2]
GRANT = "g-2026-001"
COUNT = "SELECT COUNT(*) AS n FROM adult_income"


def _app(services: Services):  # noqa: ANN202
    from gateway.app import create_app

    app = create_app(services=services)
    app.config["TESTING"] = True
    return app.test_client()


def test_a_data_refresh_invalidates_the_cache_and_is_charged_again(own_data, alice_of) -> None:  # noqa: ANN001
    svc, root = own_data
    client, headers = _app(svc), alice_of(svc)
    body = {"sql": COUNT, "epsilon": 0.5, "grant": GRANT}
    first = client.post("/v1/query", json=body, headers=headers).get_json()
    again = client.post("/v1/query", json=body, headers=headers).get_json()
    assert first["cached"] is False and again["cached"] is True and again["rows"] == first["rows"]
    assert svc.ledger.state(GRANT).epsilon_spent == 0.5
    # the agency refreshes the data: 2,000 fewer rows
    src = root / "adult_income.parquet"
    rows = duckdb.sql(f"SELECT COUNT(*) FROM '{src}'").fetchall()[0][0]
    tmp = root / "adult_income.new.parquet"
    duckdb.sql(f"COPY (SELECT * FROM '{src}' LIMIT {rows - 2000}) TO '{tmp}' (FORMAT parquet)")
    tmp.replace(src)
    build = svc.engine.build_id
    # the new file is built in the background: meanwhile the old one answers (the same answer, free)
    during = client.post("/v1/query", json=body, headers=headers).get_json()
    assert during["query_id"] == first["query_id"] and during["cached"] is True
    assert svc.engine.wait(120) and svc.engine.build_id != build  # rebuilt from the new file, swapped in
    fresh = client.post("/v1/query", json=body, headers=headers).get_json()
    assert fresh["cached"] is False and fresh["query_id"] != first["query_id"]
    assert fresh["epsilon_spent"] == 0.5
    assert svc.ledger.state(GRANT).epsilon_spent == 1.0  # charged again; the refresh reset nothing
    assert abs(fresh["rows"][0][0] - (rows - 2000)) <= 4 * fresh["accuracy"]["ci_halfwidth"]["n"]
    # and the new answer is the one replayed from now on
    assert client.post("/v1/query", json=body, headers=headers).get_json()["query_id"] == fresh["query_id"]


def test_a_new_bound_in_the_catalog_entry_is_a_new_answer(own_data, alice_of) -> None:  # noqa: ANN001
    svc, _ = own_data
    client, headers = _app(svc), alice_of(svc)
    body = {"sql": "SELECT COUNT(*) AS n FROM nhanes_2017", "epsilon": 0.5, "grant": GRANT}
    first = client.post("/v1/query", json=body, headers=headers).get_json()
    ds = svc.policies.datasets()["nhanes_2017"]
    svc.policies.apply_dataset(ds.model_copy(update={"max_rows_per_unit": 2}), "admin")
    # until the file built with the new bound is in force, the old file answers with the old bound
    assert client.post("/v1/query", json=body, headers=headers).get_json()["query_id"] == first["query_id"]
    assert svc.engine.wait(120)
    second = client.post("/v1/query", json=body, headers=headers).get_json()
    assert second["cached"] is False and second["query_id"] != first["query_id"]
    assert second["mechanism"]["scales"]["count(*)"] == 2 * first["mechanism"]["scales"]["count(*)"]
    assert svc.ledger.state(GRANT).epsilon_spent == 1.0


@pytest.fixture
def alice_of():  # noqa: ANN201
    return lambda svc: {"Authorization": f"Bearer {svc.tokens.create('alice')}"}


# -- zCDP grants ---------------------------------------------------------------------------------
@pytest.fixture
def zcdp(services: Services) -> Services:
    g = services.policies.grant(GRANT).model_dump(mode="json")
    # per-query cap in epsilon at the grant's delta: rho 0.125 is epsilon 2.75 at delta 1e-6
    g.update(id="g-zcdp", accounting="zcdp", max_epsilon_per_query=5.0)
    services.policies.apply_grant(Grant.model_validate(g), "admin")
    return services


def test_zcdp_grant_answers_with_gaussian_noise_charged_in_rho(client, alice, zcdp: Services) -> None:  # noqa: ANN001
    r = client.post("/v1/query", json={"sql": COUNT, "rho": 0.125, "grant": "g-zcdp"}, headers=alice)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["mechanism"]["name"] == "discrete_gaussian" and body["rho_spent"] == 0.125
    assert body["mechanism"]["scales"]["count(*)"] == pytest.approx(2.0)  # 1 / sqrt(2 * 0.125)
    budget = body["budget"]
    assert budget["accounting"] == "zcdp" and budget["rho_spent"] == 0.125 and budget["delta"] == 1e-6
    assert 0 < budget["epsilon_spent"] == body["epsilon_spent"] < budget["epsilon_total"] == 10.0
    refused = client.post("/v1/query", json={"sql": COUNT, "epsilon": 0.5, "grant": "g-zcdp"}, headers=alice)
    assert refused.status_code == 400 and refused.get_json()["error"]["code"] == "wrong_accounting"
    refused = client.post("/v1/query", json={"sql": COUNT, "rho": 0.1, "grant": GRANT}, headers=alice)
    assert refused.status_code == 400 and refused.get_json()["error"]["code"] == "wrong_accounting"
    over = client.post("/v1/query", json={"sql": COUNT, "rho": 0.6, "grant": "g-zcdp"}, headers=alice)
    assert over.status_code == 400 and over.get_json()["error"]["code"] == "epsilon_over_cap"  # epsilon 6.4 > 5


# -- plans ---------------------------------------------------------------------------------------
PLANNED = [
    "SELECT sex, COUNT(*) AS n, SUM(income_ratio) AS s FROM nhanes_2017 GROUP BY sex",
    "SELECT education, COUNT(*) AS n FROM adult_income GROUP BY education",
]


@pytest.mark.parametrize("sql", PLANNED)
@pytest.mark.parametrize(("grant", "unit", "cost"), [(GRANT, "epsilon", 0.3), ("g-zcdp", "rho", 0.05)])
def test_plan_halfwidth_equals_the_released_one(client, alice, zcdp, sql, grant, unit, cost) -> None:  # noqa: ANN001, PLR0913
    before = zcdp.ledger.state(grant)
    entries = len(list(zcdp.audit.entries()))
    plan = client.post("/v1/plan", json={"sql": sql, unit: cost, "grant": grant}, headers=alice)
    assert plan.status_code == 200, plan.get_json()
    planned = plan.get_json()
    assert planned["charged"] is False and zcdp.ledger.state(grant) == before  # free
    assert [e["action"] for e in list(zcdp.audit.entries())[entries:]] == ["query.planned"]
    released = client.post("/v1/query", json={"sql": sql, unit: cost, "grant": grant}, headers=alice).get_json()
    assert planned["accuracy"]["ci_halfwidth"] == released["accuracy"]["ci_halfwidth"]
    assert planned["mechanism"]["scales"] == released["mechanism"]["scales"]


@pytest.mark.parametrize(("grant", "unit"), [(GRANT, "epsilon"), ("g-zcdp", "rho")])
def test_plan_finds_the_cost_of_a_target_halfwidth(client, alice, zcdp, grant, unit) -> None:  # noqa: ANN001
    sql = "SELECT sex, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex"
    r = client.post("/v1/plan", json={"sql": sql, "ci_halfwidth": 10, "grant": grant}, headers=alice)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    cost = body[unit]
    assert body["accuracy"]["ci_halfwidth"]["n"] <= 10
    # the smallest such cost (to 0.1%): a little less does not reach the target
    less = client.post("/v1/plan", json={"sql": sql, unit: cost * 0.995, "grant": grant}, headers=alice).get_json()
    assert less["accuracy"]["ci_halfwidth"]["n"] > 10
    released = client.post("/v1/query", json={"sql": sql, unit: cost, "grant": grant}, headers=alice).get_json()
    assert released["accuracy"]["ci_halfwidth"]["n"] <= 10


def test_plan_is_checked_like_a_query(client, alice, mallory, zcdp) -> None:  # noqa: ANN001
    ok = {"sql": "SELECT COUNT(*) AS n FROM nhanes_2017", "epsilon": 0.1, "grant": GRANT}
    assert client.post("/v1/plan", json=ok).status_code == 401
    assert client.post("/v1/plan", json=ok, headers=mallory).status_code == 403
    bad = client.post("/v1/plan", json={**ok, "sql": "SELECT seqn FROM nhanes_2017"}, headers=alice)
    assert bad.status_code == 400
    both = client.post("/v1/plan", json={**ok, "ci_halfwidth": 3}, headers=alice)
    assert both.status_code == 400 and both.get_json()["error"]["code"] == "bad_epsilon"
    avg = client.post("/v1/plan", json={"sql": "SELECT AVG(age) AS a FROM nhanes_2017", "ci_halfwidth": 1,
                                        "grant": GRANT}, headers=alice)
    assert avg.status_code == 400 and avg.get_json()["error"]["code"] == "bad_halfwidth"
    for junk in (0, -1, float("inf"), "10", True):
        r = client.post("/v1/plan", json={**ok, "epsilon": None, "ci_halfwidth": junk}, headers=alice)
        assert r.status_code == 400


def test_notebook_client_plans_then_queries(live_server, services: Services, zcdp) -> None:  # noqa: ANN001
    from sandbox.client import Client, GatewayError

    db = Client(live_server, services.tokens.create("alice"), grant=GRANT)
    sql = "SELECT sex, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex"
    need = db.plan(sql, ci_halfwidth=10)
    assert need["charged"] is False and need["accuracy"]["ci_halfwidth"]["n"] <= 10
    planned = db.plan(sql, epsilon=need["epsilon"])
    df = db.query(sql, need["epsilon"])
    assert df.attrs["accuracy"]["ci_halfwidth"] == planned["accuracy"]["ci_halfwidth"]
    assert df.attrs["epsilon_spent"] == need["epsilon"]
    zdf = db.query(sql, rho=0.02, grant="g-zcdp")
    assert zdf.attrs["rho_spent"] == 0.02 and zdf.attrs["mechanism"]["name"] == "discrete_gaussian"
    with pytest.raises(GatewayError) as info:
        db.plan(sql, epsilon=0.1, grant="g-zcdp")
    assert info.value.code == "wrong_accounting"


def test_plan_touches_no_data(client, alice, services: Services) -> None:  # noqa: ANN001
    """With the engine gone, a query fails but a plan still answers: it never reaches the data."""
    services.engine._gen = None  # no engine file in force
    services.engine.refresh = lambda *_a, **_k: None  # and none coming
    body = {"sql": "SELECT sex, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex", "epsilon": 0.2, "grant": GRANT}
    plan = client.post("/v1/plan", json=body, headers=alice)
    assert plan.status_code == 200 and plan.get_json()["accuracy"]["ci_halfwidth"]["n"] > 0
    assert client.post("/v1/query", json=body, headers=alice).status_code != 200


def test_a_dataset_cap_is_never_raised_by_a_file(services: Services) -> None:
    from sandbox.errors import Conflict

    ds = services.policies.datasets()["nhanes_2017"]
    assert ds.budget is not None
    lower = ds.model_copy(update={"budget": ds.budget.model_copy(update={"epsilon": ds.budget.epsilon - 1})})
    services.policies.apply_dataset(lower, "admin")
    with pytest.raises(Conflict) as info:
        services.policies.apply_dataset(ds, "admin")  # back up: refused
    assert info.value.code == "budget_fixed"
    assert services.policies.datasets()["nhanes_2017"].budget.epsilon == ds.budget.epsilon - 1


# -- hostile plans (the attacker's review of issue 9) -----------------------------------------------
def _strict_json(text: str) -> object:
    """JSON as the standard defines it: NaN, Infinity and -Infinity are not JSON."""
    import json

    def refuse(name: str) -> None:
        raise ValueError(f"invalid JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


HOSTILE_PLANS = [
    ("pure", {"ci_halfwidth": 5e-324}), ("zcdp", {"ci_halfwidth": 5e-324}),
    ("pure", {"ci_halfwidth": 1e-12}), ("zcdp", {"ci_halfwidth": 1e-12}),
    ("pure", {"ci_halfwidth": 0.3}), ("zcdp", {"ci_halfwidth": 0.3}),
    ("zcdp", {"ci_halfwidth": 1e6}), ("zcdp", {"ci_halfwidth": 1e9}), ("pure", {"ci_halfwidth": 1e9}),
    ("zcdp", {"ci_halfwidth": 1e15}), ("zcdp", {"rho": 5e-7}), ("pure", {"epsilon": 100}),
    ("zcdp", {"rho": 5000}), ("pure", {"epsilon": 0.001}),
]


@pytest.mark.parametrize(("accounting", "cost"), HOSTILE_PLANS)
def test_hostile_plans_answer_fast_with_valid_json(client, alice, zcdp, accounting, cost) -> None:  # noqa: ANN001
    """No 500, no non-standard JSON (``-Infinity``), and no CPU held for seconds by a free request."""
    import time

    grant = GRANT if accounting == "pure" else "g-zcdp"
    sql = "SELECT COUNT(*) AS n, SUM(age) AS s, SUM(weight_kg) AS w FROM nhanes_2017"
    t0 = time.monotonic()
    r = client.post("/v1/plan", json={"sql": sql, "grant": grant, **cost}, headers=alice)
    elapsed = time.monotonic() - t0
    assert elapsed < 1.0, f"{cost}: {elapsed:.1f} s"
    assert r.status_code in (200, 400), r.get_data(as_text=True)
    body = _strict_json(r.get_data(as_text=True))
    if r.status_code == 400:
        assert body["error"]["code"] in ("bad_halfwidth", "bad_epsilon", "epsilon_over_cap", "wrong_accounting")
    else:
        assert all(v is None or v >= 0 for v in body["accuracy"]["ci_halfwidth"].values())


def test_targets_below_one_unit_are_refused(client, alice, zcdp) -> None:  # noqa: ANN001
    for grant in (GRANT, "g-zcdp"):
        r = client.post("/v1/plan", json={"sql": COUNT, "ci_halfwidth": 0.3, "grant": grant}, headers=alice)
        assert r.status_code == 400 and r.get_json()["error"]["code"] == "bad_halfwidth"
        assert "at least" in r.get_json()["error"]["message"]


def test_a_near_free_zcdp_query_answers_fast(client, alice, zcdp) -> None:  # noqa: ANN001
    import time

    t0 = time.monotonic()
    r = client.post("/v1/query", json={"sql": "SELECT SUM(weight_kg) AS w, SUM(height_cm) AS h FROM nhanes_2017",
                                       "rho": 5e-7, "grant": "g-zcdp"}, headers=alice)
    assert r.status_code == 200 and time.monotonic() - t0 < 3.0
    _strict_json(r.get_data(as_text=True))


def test_a_large_epsilon_query_has_valid_json(client, alice, services) -> None:  # noqa: ANN001
    g = services.policies.grant(GRANT).model_dump(mode="json")
    g.update(id="g-big", max_epsilon_per_query=100, budget={"epsilon": 100, "delta": 1e-6})
    services.policies.apply_grant(Grant.model_validate(g), "admin")
    r = client.post("/v1/query", json={"sql": COUNT, "epsilon": 100, "grant": "g-big"}, headers=alice)
    assert r.status_code in (200, 409)
    body = _strict_json(r.get_data(as_text=True))
    if r.status_code == 200:
        assert body["accuracy"]["ci_halfwidth"]["n"] >= 0


def test_zcdp_per_query_cap_holds_in_epsilon(client, alice, services) -> None:  # noqa: ANN001
    """The review's case: a zCDP grant capped at epsilon 1 per query answered rho 0.5 (epsilon 5.2)."""
    g = services.policies.grant(GRANT).model_dump(mode="json")
    g.update(id="g-z1", accounting="zcdp")  # max_epsilon_per_query 1.0, delta 1e-6
    services.policies.apply_grant(Grant.model_validate(g), "admin")
    body = {"sql": COUNT, "rho": 0.5, "grant": "g-z1"}
    r = client.post("/v1/query", json=body, headers=alice)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "epsilon_over_cap"
    assert services.ledger.state("g-z1").rho_spent == 0
    assert client.post("/v1/plan", json=body, headers=alice).get_json()["within_per_query_cap"] is False
    ok = client.post("/v1/query", json={**body, "rho": 0.024}, headers=alice)  # epsilon 0.99 at delta 1e-6
    assert ok.status_code == 200 and ok.get_json()["epsilon_spent"] <= 1.0


def test_a_failed_build_answers_a_generic_503(own_data, alice_of, caplog) -> None:  # noqa: ANN001
    """DuckDB's error text (a SQL excerpt, possibly near the bounding key's pads) never reaches an operator,
    nor the audit log. In the background the old file keeps answering; a blocking build is a generic 503."""
    import logging

    from sandbox.engine import EngineError

    svc, root = own_data
    client, headers = _app(svc), alice_of(svc)
    before = client.post("/v1/query", json={"sql": COUNT, "epsilon": 0.5, "grant": GRANT}, headers=headers)
    src = root / "adult_income.parquet"
    tmp = root / "adult_income.new.parquet"  # a refresh that lost a declared column
    duckdb.sql(f"COPY (SELECT * EXCLUDE (occupation) FROM '{src}') TO '{tmp}' (FORMAT parquet)")
    tmp.replace(src)
    with caplog.at_level(logging.ERROR, logger="sandbox.engine"):
        r = client.post("/v1/query", json={"sql": COUNT, "epsilon": 0.5, "grant": GRANT}, headers=headers)
        assert svc.engine.wait(120)
    assert r.status_code == 200 and r.get_json()["query_id"] == before.get_json()["query_id"]
    failed = [e for e in svc.audit.entries() if e["action"] == "engine.build_failed"]
    assert len(failed) == 1 and failed[0]["detail"]["code"] == "import_failed"
    with pytest.raises(EngineError) as info:
        svc.engine.ensure(svc.policies.datasets())
    error = info.value
    assert error.code == "import_failed" and error.status == 503
    for leak in ("SELECT", "read_parquet", "LINE", "\\x", "occupation", "Binder", "sha256", "adult_income.parquet"):
        assert leak not in error.message, leak
        assert leak not in json.dumps(failed[0]["detail"]), leak
    logged = " ".join(rec.getMessage() for rec in caplog.records)
    assert "occupation" in logged  # the administrator has the detail in the gateway's log
    assert "\\x" not in logged  # without the key's pads
