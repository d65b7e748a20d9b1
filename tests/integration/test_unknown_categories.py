"""Unknown categories: GROUP BY a {type: text} column releases only keys chosen by DP partition
selection (OpenDP's thresholded Laplace), paid with the grant's delta.

A real gateway over its own small catalog: a clinic-visits table whose ``city`` column is text.
Two cities hold hundreds of patients; ``Smalltown`` is held by a single patient with many rows.
The attack: ask for the cities again and again, at the largest epsilon the grant allows; the
single patient's city must never appear, while the big cities always do.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sandbox.dp.selection import SELECTIONS_PER_GRANT, calibrate, select_keys
from sandbox.policy.loader import load_policies
from sandbox.services import Services, Settings
from sandbox.state.grants_store import apply_policies

GRANT = "g-visits"
DELTA = 1e-6


@pytest.fixture
def visits_client(tmp_path: Path):  # noqa: ANN201
    data, policies = tmp_path / "data", tmp_path / "policies"
    (policies / "datasets").mkdir(parents=True)
    (policies / "grants").mkdir()
    data.mkdir()
    pids, cities, costs, postcodes = [], [], [], []
    for city, patients, postcode in (("Bigcity", 500, 10115), ("Midcity", 300, 20095)):
        for p in range(patients):
            for visit in range(1 + p % 3):
                pids.append(f"{city}-{p}")
                cities.append(city)
                costs.append(20 + visit)
                postcodes.append(postcode)
    for _ in range(5):  # one patient, five visits (the bound keeps at most 3)
        pids.append("lonely-1")
        cities.append("Smalltown")
        costs.append(99)
        postcodes.append(99999)
    pq.write_table(pa.table({"pid": pids, "city": cities, "cost": costs, "postcode": postcodes}),
                   data / "visits.parquet")
    (policies / "datasets" / "visits.yaml").write_text(textwrap.dedent("""
        id: visits
        title: Clinic visits
        source: visits.parquet
        classification: L2
        privacy_unit: pid
        max_rows_per_unit: 3
        columns:
          pid: {type: id}
          city: {type: text}
          cost: {type: int, bounds: [0, 100]}
          postcode: {type: int}
    """))
    (policies / "grants" / "g-visits.yaml").write_text(textwrap.dedent(f"""
        id: {GRANT}
        operator: Test Ltd.
        members: [alice]
        mode: scenario
        purpose: testing unknown categories
        datasets: {{visits: {{columns: [city, cost, postcode]}}}}
        valid_from: 2020-01-01
        valid_until: 2099-12-31
        budget: {{epsilon: 10.0, delta: {DELTA}}}
        max_epsilon_per_query: 1.0
    """))
    services = Services(Settings(state_dir=tmp_path / "state", data_root=data))
    apply_policies(services.policies, load_policies(policies), "test")
    services.engine.ensure(services.policies.datasets())
    from gateway.app import create_app

    app = create_app(services=services)
    app.config["TESTING"] = True
    token = services.tokens.create("alice")
    return app.test_client(), {"Authorization": f"Bearer {token}"}, services


def _ask(client, headers, sql: str, epsilon: float):  # noqa: ANN001, ANN202
    return client.post("/v1/query", headers=headers, json={"sql": sql, "epsilon": epsilon, "grant": GRANT})


def test_a_key_held_by_one_unit_is_never_released(visits_client) -> None:  # noqa: ANN001
    client, alice, services = visits_client
    seen: set[str] = set()
    for i in range(8):  # distinct queries (no cache), the largest epsilon per query
        sql = f"SELECT city, COUNT(*) AS n, AVG(cost) AS c FROM visits WHERE cost > -{i + 1} GROUP BY city"
        resp = _ask(client, alice, sql, 1.0)
        assert resp.status_code == 200, resp.get_json()
        body = resp.get_json()
        cities = [row[0] for row in body["rows"]]
        assert cities == ["Bigcity", "Midcity"]  # sorted, and never Smalltown
        seen.update(cities)
        sel = body["mechanism"]["partition_selection"]
        assert sel["delta"] == pytest.approx(DELTA / SELECTIONS_PER_GRANT)
        # four equal shares: the selection, count(*), sum(cost) and count(cost) (AVG)
        assert sel["threshold"] > 10 and sel["epsilon"] == pytest.approx(1.0 / 4)
    assert "Smalltown" not in seen
    total, spent = services.ledger.delta_state(GRANT)
    assert (total, spent) == (pytest.approx(DELTA), pytest.approx(8 * DELTA / SELECTIONS_PER_GRANT))


def test_the_threshold_mechanism_never_releases_a_unique_key() -> None:
    """The mechanism alone, 3,000 times: a key of 1 unit stays out, big keys stay in, and a key of a third
    of the threshold is released about as rarely as its tail says (P = e^-(t - few) / (1 + e^-1), about
    1.6e-6 per run: 0.005 expected in 3,000, so more than 2 means the threshold or the noise is wrong;
    exactly 0 would fail about once in 200 runs, and CI saw that once)."""
    scale, threshold = calibrate(1.0, 1e-8)
    few = max(1, threshold // 3)
    released = {"unique": 0, "few": 0, "big": 0}
    for _ in range(3000):
        keys = select_keys({("unique",): 1, ("few",): few, ("big",): threshold + 40}, 1.0, 1e-8).keys
        for (name,) in keys:
            released[name] += 1
    assert released["unique"] == 0 and released["big"] == 3000, released
    assert released["few"] <= 2, released


def test_delta_is_charged_and_runs_out(visits_client) -> None:  # noqa: ANN001
    client, alice, services = visits_client
    for i in range(SELECTIONS_PER_GRANT):
        resp = _ask(client, alice, f"SELECT city, COUNT(*) FROM visits WHERE cost > -{i + 1} GROUP BY city", 0.01)
        assert resp.status_code == 200, (i, resp.get_json())
    before = services.ledger.state(GRANT).to_dict()
    resp = _ask(client, alice, "SELECT city, COUNT(*) FROM visits WHERE cost > -1000 GROUP BY city", 0.01)
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "budget_exhausted"
    assert "delta" in resp.get_json()["error"]["message"]
    assert services.ledger.state(GRANT).to_dict() == before  # nothing charged by the refusal
    # declared keys spend no delta and still work
    assert _ask(client, alice, "SELECT COUNT(*) FROM visits", 0.01).status_code == 200


def test_declared_keys_spend_no_delta(client, alice, services) -> None:  # noqa: ANN001
    resp = client.post("/v1/query", headers=alice,
                       json={"sql": "SELECT sex, COUNT(*) FROM nhanes_2017 GROUP BY sex", "epsilon": 0.1,
                             "grant": "g-2026-001"})
    assert resp.status_code == 200 and "partition_selection" not in resp.get_json()["mechanism"]
    assert services.ledger.delta_state("g-2026-001")[1] == 0.0


def test_an_unbounded_int_key_goes_through_selection_too(visits_client) -> None:  # noqa: ANN001
    client, alice, _ = visits_client
    for i in range(5):
        sql = f"SELECT postcode, COUNT(*) AS n FROM visits WHERE cost > -{i + 1} GROUP BY postcode"
        resp = _ask(client, alice, sql, 1.0)
        assert resp.status_code == 200, resp.get_json()
        assert [row[0] for row in resp.get_json()["rows"]] == [10115, 20095]  # numbers, in order; never 99999
    resp = _ask(client, alice, "SELECT SUM(postcode) FROM visits", 0.1)
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "unbounded_column"


def test_a_zcdp_grant_is_refused_partition_selection(visits_client) -> None:  # noqa: ANN001
    """Selection spends delta, which a zcdp grant already spends converting rho: refused before any charge."""
    from sandbox.policy.models import Grant

    client, alice, services = visits_client
    g = services.policies.grant(GRANT).model_dump(mode="json")
    g.update(id="g-visits-zcdp", accounting="zcdp")
    services.policies.apply_grant(Grant.model_validate(g), "admin")
    before = services.ledger.state("g-visits-zcdp").to_dict()
    for key in ("city", "postcode"):
        sql = f"SELECT {key}, COUNT(*) FROM visits GROUP BY {key}"
        for path in ("/v1/query", "/v1/plan"):
            resp = client.post(path, headers=alice, json={"sql": sql, "rho": 0.01, "grant": "g-visits-zcdp"})
            assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "selection_needs_pure"
    assert services.ledger.state("g-visits-zcdp").to_dict() == before
    assert services.ledger.delta_state("g-visits-zcdp")[1] == 0.0
    # declared keys and bounded columns still work on it
    ok = client.post("/v1/query", headers=alice,
                     json={"sql": "SELECT SUM(cost) FROM visits", "rho": 0.01, "grant": "g-visits-zcdp"})
    assert ok.status_code == 200, ok.get_json()


def test_the_plan_states_the_selection_before_spending(visits_client) -> None:  # noqa: ANN001
    client, alice, services = visits_client
    sql = "SELECT city, COUNT(*) AS n FROM visits GROUP BY city"
    plan = client.post("/v1/plan", headers=alice, json={"sql": sql, "epsilon": 1.0, "grant": GRANT})
    assert plan.status_code == 200, plan.get_json()
    planned = plan.get_json()["mechanism"]["partition_selection"]
    assert services.ledger.delta_state(GRANT)[1] == 0.0  # free
    released = _ask(client, alice, sql, 1.0).get_json()["mechanism"]["partition_selection"]
    assert {k: planned[k] for k in ("threshold", "delta", "epsilon", "scale")} == \
        {k: released[k] for k in ("threshold", "delta", "epsilon", "scale")}
