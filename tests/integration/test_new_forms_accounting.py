"""The aggregates of issue 11 under issue 9's accounting: zcdp grants and free plans.

Quantiles (pure-DP noisy max) are charged in rho at epsilon = sqrt(2 * rho share); spreads and
COUNT(DISTINCT unit) get discrete Gaussian noise; the plan states, before spending, the same
half-widths and rank errors the answer then reports (null with a reason where an interval
depends on the noisy count).
"""

from __future__ import annotations

import math

import pytest

from sandbox.dp import quantiles
from sandbox.policy.models import Grant
from sandbox.services import Services

GRANT = "g-2026-001"
SQL = ("SELECT sex, COUNT(DISTINCT seqn) AS people, MEDIAN(age) AS m, VAR_POP(height_cm) AS v, "
       "AVG(age) AS a FROM nhanes_2017 GROUP BY sex")


@pytest.fixture
def zcdp(services: Services) -> Services:
    g = services.policies.grant(GRANT).model_dump(mode="json")
    g.update(id="g-zcdp", accounting="zcdp")
    services.policies.apply_grant(Grant.model_validate(g), "admin")
    return services


def test_new_aggregates_on_a_zcdp_grant_are_gaussian_and_charged_in_rho(client, alice, zcdp) -> None:  # noqa: ANN001
    r = client.post("/v1/query", json={"sql": SQL, "rho": 0.01, "grant": "g-zcdp"}, headers=alice)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["rho_spent"] == 0.01 and body["budget"]["rho_spent"] == 0.01
    mech = body["mechanism"]
    assert mech["name"] == "discrete_gaussian"
    share = mech["rho_per_measurement"]
    n_measurements = len({m for ms in mech["measurements"].values() for m in ms})
    assert share == pytest.approx(0.01 / n_measurements)
    # COUNT(DISTINCT unit): sensitivity 1, Gaussian scale 1 / sqrt(2 rho share)
    assert mech["scales"]["units(*)"] == pytest.approx(1 / math.sqrt(2 * share))
    # the quantile's noisy max runs at epsilon sqrt(2 rho share): scale 2 * sensitivity / epsilon
    sensitivity = quantiles.score_sensitivity(0.5, zcdp.policies.datasets()["nhanes_2017"].max_rows_per_unit)
    assert mech["scales"]["quantile(age, 0.5)"] == pytest.approx(2 * sensitivity / math.sqrt(2 * share))
    assert body["accuracy"]["quantiles"]["m"]["rank_error"] > 0
    assert body["accuracy"]["ci_halfwidth"]["m"] is None
    assert body["accuracy"]["ci_halfwidth"]["v"] > 0 and body["accuracy"]["ci_halfwidth"]["people"] > 0
    assert [row[0] for row in body["rows"]] == ["male", "female"]


@pytest.mark.parametrize(("grant", "unit", "cost"), [(GRANT, "epsilon", 0.4), ("g-zcdp", "rho", 0.01)])
def test_plan_of_the_new_aggregates_matches_the_answer(client, alice, zcdp, grant, unit, cost) -> None:  # noqa: ANN001, PLR0913
    before = zcdp.ledger.state(grant)
    plan = client.post("/v1/plan", json={"sql": SQL, unit: cost, "grant": grant}, headers=alice)
    assert plan.status_code == 200, plan.get_json()
    planned = plan.get_json()
    assert zcdp.ledger.state(grant) == before  # free
    widths = planned["accuracy"]["ci_halfwidth"]
    assert set(widths) == {"people", "m", "v", "a"}
    assert widths["people"] > 0 and widths["m"] is None and widths["v"] is None and widths["a"] is None
    assert set(planned["accuracy"]["ci_halfwidth_null"]) == {"m", "v", "a"}
    released = client.post("/v1/query", json={"sql": SQL, unit: cost, "grant": grant}, headers=alice).get_json()
    assert released["accuracy"]["ci_halfwidth"]["people"] == widths["people"]
    assert released["accuracy"]["quantiles"] == planned["accuracy"]["quantiles"]
    assert released["mechanism"]["scales"] == planned["mechanism"]["scales"]


def test_plan_sizes_a_people_count(client, alice) -> None:  # noqa: ANN001
    sql = "SELECT sex, COUNT(DISTINCT seqn) AS people FROM nhanes_2017 GROUP BY sex"
    r = client.post("/v1/plan", json={"sql": sql, "ci_halfwidth": 5, "grant": GRANT}, headers=alice)
    assert r.status_code == 200, r.get_json()
    eps = r.get_json()["epsilon"]
    released = client.post("/v1/query", json={"sql": sql, "epsilon": eps, "grant": GRANT}, headers=alice).get_json()
    assert released["accuracy"]["ci_halfwidth"]["people"] <= 5
    median = client.post("/v1/plan", json={"sql": "SELECT MEDIAN(age) AS m FROM nhanes_2017", "ci_halfwidth": 5,
                                           "grant": GRANT}, headers=alice)
    assert median.status_code == 400 and median.get_json()["error"]["code"] == "bad_halfwidth"
