"""Attacks from the independent review of issue 12 on monitoring: an outsider naming someone else's
grant in refused requests must not get it blamed or suspended, and probing through ``/v1/plan`` is
probing too."""

from __future__ import annotations

import json

import pytest

from sandbox.errors import PolicyError
from sandbox.policy.loader import parse_model
from sandbox.policy.monitoring import MonitoringPolicy
from sandbox.services import Services

GRANT = "g-2026-001"
COUNT = "SELECT COUNT(*) FROM nhanes_2017"


def _alerts(services: Services) -> list[tuple[str, object]]:
    return [(a["rule"], a["grant_id"]) for a in services.db.read("SELECT rule, grant_id FROM alerts")]


def test_outsider_refusals_are_never_filed_under_the_named_grant(client, services: Services, alice,  # noqa: ANN001
                                                                  mallory) -> None:
    for _ in range(25):
        resp = client.post("/v1/query", headers=mallory, json={"grant": GRANT, "sql": COUNT, "epsilon": 0.1})
        assert resp.status_code == 403 and resp.get_json()["error"]["code"] == "not_a_member"
    rows = services.db.read("SELECT grant_id, detail FROM audit WHERE action = 'query.refused'")
    assert rows and all(r["grant_id"] is None for r in rows)
    assert json.loads(rows[0]["detail"])["requested_grant"] == GRANT
    assert _alerts(services) == [("refused_burst", None)]  # the user is flagged, not alice's grant
    assert services.policies.grant(GRANT).status == "active"
    resp = client.post("/v1/query", headers=alice, json={"grant": GRANT, "sql": COUNT, "epsilon": 0.1})
    assert resp.status_code == 200


def test_member_refusals_stay_filed_under_their_grant(client, services: Services, alice) -> None:  # noqa: ANN001
    services.policies.set_status(GRANT, "suspended", "admin", "inspection")
    resp = client.post("/v1/query", headers=alice, json={"grant": GRANT, "sql": COUNT, "epsilon": 0.1})
    assert resp.status_code == 403
    row = services.db.read("SELECT grant_id, detail FROM audit WHERE action = 'query.refused'")[-1]
    assert row["grant_id"] == GRANT and "requested_grant" not in json.loads(row["detail"])


def test_refused_burst_cannot_be_configured_to_suspend() -> None:
    with pytest.raises(PolicyError):
        parse_model(MonitoringPolicy, {"refused_burst": {"suspend": True}}, "monitoring.yaml")


def test_id_probing_through_plan_is_detected_and_suspends(client, services: Services, alice) -> None:  # noqa: ANN001
    for i in range(10):
        resp = client.post("/v1/plan", headers=alice, json={
            "grant": GRANT, "sql": f"{COUNT} WHERE seqn = {i}", "epsilon": 0.1})
        assert resp.status_code in (400, 403)
    assert ("id_probing", GRANT) in _alerts(services)
    assert services.policies.grant(GRANT).status == "suspended"
    resp = client.post("/v1/plan", headers=alice, json={"grant": GRANT, "sql": COUNT, "epsilon": 0.1})
    assert resp.status_code == 403 and resp.get_json()["error"]["code"] == "grant_suspended"


def test_refused_plans_count_in_the_refused_burst(client, services: Services, alice) -> None:  # noqa: ANN001
    for _ in range(20):
        client.post("/v1/plan", headers=alice, json={"grant": GRANT, "sql": "SELECT 1", "epsilon": 0.1})
    assert ("refused_burst", None) in _alerts(services)
