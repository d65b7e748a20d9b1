"""Disclosure by operators: declarations reviewed by the authority, the grant's public record with its
use per quarter, suspension and revocation reasons, and the out-of-policy status. Attacks: an operator
approving their own declaration, an outsider declaring for a grant, unreviewed items leaking."""

from __future__ import annotations

import pytest

from sandbox import offerings
from sandbox.services import Services

GRANT = "g-2026-001"


@pytest.fixture
def admin(services: Services) -> dict[str, str]:
    return {"Authorization": f"Bearer {services.tokens.create('admin')}"}


def _declare(client, who, **extra):  # noqa: ANN001, ANN003, ANN202
    body = {"grant": GRANT, "kind": "product", "name": "Clinic siting atlas",
            "description": "District-level maps of health service demand.", **extra}
    return client.post("/v1/offerings", headers=who, json=body)


def test_declaration_is_published_only_once_approved(client, services: Services, alice, admin) -> None:  # noqa: ANN001
    resp = _declare(client, alice)
    assert resp.status_code == 201
    oid = resp.get_json()["id"]
    assert client.get(f"/public/grants/{GRANT}?format=json").get_json()["offerings"] == []
    # the operator cannot approve their own declaration
    resp = client.post(f"/admin/offerings/{oid}", headers=alice, json={"decision": "approve"})
    assert resp.status_code == 403
    assert client.get("/admin/offerings", headers=alice).status_code == 403
    assert [o["id"] for o in client.get("/admin/offerings?format=json", headers=admin).get_json()["offerings"]] \
        == [oid]
    resp = client.post(f"/admin/offerings/{oid}", headers=admin, json={"decision": "approve"})
    assert resp.status_code == 200 and resp.get_json()["status"] == "approved"
    record = client.get(f"/public/grants/{GRANT}?format=json").get_json()
    assert [o["name"] for o in record["offerings"]] == ["Clinic siting atlas"]
    assert "submitted_by" not in record["offerings"][0] and "alice" not in str(record)
    html = client.get(f"/public/grants/{GRANT}").get_data(as_text=True)
    assert "Clinic siting atlas" in html
    # approving twice, or rejecting once approved, is an illegal transition
    assert client.post(f"/admin/offerings/{oid}", headers=admin, json={"decision": "reject", "comment": "x"}) \
        .status_code == 409
    # the operator withdraws it; it disappears from the register
    assert client.post(f"/v1/offerings/{oid}/withdraw", headers=alice).get_json()["status"] == "withdrawn"
    assert client.get(f"/public/grants/{GRANT}?format=json").get_json()["offerings"] == []
    actions = [e["action"] for e in services.audit.entries() if e["action"].startswith("offering.")]
    assert actions == ["offering.submitted", "offering.approved", "offering.withdrawn"]


def test_rejection_needs_a_comment_and_outsiders_cannot_declare(client, alice, mallory, admin) -> None:  # noqa: ANN001
    assert _declare(client, mallory).status_code == 403
    assert _declare(client, admin).status_code == 403  # the authority does not declare for operators
    assert _declare(client, alice, kind="gadget").status_code == 400
    assert _declare(client, alice, name=" ").status_code == 400
    assert _declare(client, alice, price="-1").status_code == 400
    assert _declare(client, alice, price="1.234").status_code == 400
    assert _declare(client, alice, price="NaN").status_code == 400
    assert _declare(client, alice, price="10.00", free_to_public=True).status_code == 400
    oid = _declare(client, alice, kind="service", name="Custom tabulations").get_json()["id"]
    resp = client.post(f"/admin/offerings/{oid}", headers=admin, json={"decision": "reject"})
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "missing_comment"
    assert client.post(f"/v1/offerings/{oid}/withdraw", headers=mallory).status_code == 403
    resp = client.post(f"/admin/offerings/{oid}", headers=admin, json={"decision": "reject", "comment": "vague"})
    assert resp.get_json()["status"] == "rejected"
    assert client.get(f"/v1/offerings?grant={GRANT}", headers=mallory).status_code == 403
    mine = client.get(f"/v1/offerings?grant={GRANT}", headers=alice).get_json()["offerings"]
    assert mine[0]["status"] == "rejected" and mine[0]["review_comment"] == "vague"


def test_quarterly_use_on_the_public_record(client, services: Services, alice) -> None:  # noqa: ANN001
    for i in range(3):
        body = {"sql": f"SELECT COUNT(*) AS n{i} FROM nhanes_2017", "epsilon": 0.5, "grant": GRANT}
        assert client.post("/v1/query", headers=alice, json=body).status_code == 200
    record = client.get(f"/public/grants/{GRANT}?format=json").get_json()
    quarter = offerings.quarter_of(services.today())
    current = next(q for q in record["use_by_quarter"] if q["quarter"] == quarter)
    assert current["queries"] == 3 and current["epsilon"] == 1.5 and current["exports_released"] == 0
    assert record["use_by_quarter"][-1]["quarter"] == quarter
    assert all(q["queries"] == 0 for q in record["use_by_quarter"] if q["quarter"] != quarter)


def test_reasons_and_out_of_policy_on_the_register(client, services: Services) -> None:  # noqa: ANN001
    record = client.get(f"/public/grants/{GRANT}?format=json").get_json()
    assert record["status"] == "active" and record["status_reason"] is None
    # the catalog changes under the grant: it no longer fits, and the register says so
    ds = services.policies.datasets()["nhanes_2017"].model_copy(update={"classification": "L4"})
    services.policies.apply_dataset(ds, "admin")
    record = client.get(f"/public/grants/{GRANT}?format=json").get_json()
    assert record["status"] == "out_of_policy" and "never granted" in record["out_of_policy"]
    entry = client.get("/public/grants.json").get_json()["grants"][0]
    assert entry["status"] == "out_of_policy"
    services.policies.set_status(GRANT, "suspended", "admin", "bob leaked a screenshot")
    record = client.get(f"/public/grants/{GRANT}?format=json").get_json()
    assert record["status"] == "suspended" and "bob" not in str(record)  # the internal reason stays internal
    assert record["status_reason"] == offerings.GENERIC_SUSPENSION
    offerings.publish_reason(services, GRANT, "admin", "under investigation for a data breach")
    assert client.get("/public/grants.json").get_json()["grants"][0]["status_reason"] == \
        "under investigation for a data breach"
    services.policies.set_status(GRANT, "revoked", "admin", "operator sold derived records")
    record = client.get(f"/public/grants/{GRANT}?format=json").get_json()
    assert record["status"] == "revoked" and record["status_reason"] == "operator sold derived records"
    entry = client.get("/public/grants.json").get_json()["grants"][0]
    assert entry["status"] == "revoked" and entry["status_reason"] == "operator sold derived records"
    assert "operator sold derived records" in client.get("/public/grants").get_data(as_text=True)
    assert client.get("/public/grants/nope?format=json").status_code == 404


def test_auto_suspension_publishes_a_reason_without_names(client, services: Services, alice) -> None:  # noqa: ANN001
    for i in range(12):
        client.post("/v1/query", headers=alice, json={"sql": f"SELECT COUNT(*) FROM nhanes_2017 WHERE seqn = {i}",
                                                      "epsilon": 0.1, "grant": GRANT})
    entry = client.get("/public/grants.json").get_json()["grants"][0]
    assert entry["status"] == "suspended" and "id_probing" in entry["status_reason"]
    assert "alice" not in client.get("/public/grants").get_data(as_text=True)


def test_publish_reason_needs_a_stopped_grant(services: Services) -> None:
    from sandbox.errors import Conflict

    with pytest.raises(Conflict):
        offerings.publish_reason(services, GRANT, "admin", "nothing to explain")


def test_review_page_form(client, services: Services, alice) -> None:  # noqa: ANN001
    import re

    oid = _declare(client, alice, name="Atlas of clinics").get_json()["id"]
    token = services.tokens.create("admin")
    client.post("/review/login", data={"token": token, "next": "/review/"})
    html = client.get("/admin/offerings").get_data(as_text=True)
    assert "Atlas of clinics" in html
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    assert client.post(f"/admin/offerings/{oid}", data={"decision": "approve"}).status_code == 403
    resp = client.post(f"/admin/offerings/{oid}", data={"csrf_token": csrf, "decision": "approve", "comment": ""})
    assert resp.status_code == 303
    assert [o["name"] for o in offerings.published(services, GRANT)] == ["Atlas of clinics"]


def test_admin_member_cannot_approve_their_own_declaration(client, services: Services, admin) -> None:  # noqa: ANN001
    """Review of issue 12: an admin listed in the grant approved the claim they had declared."""
    grant = services.policies.grant(GRANT)
    services.policies.apply_grant(grant.model_copy(update={"members": (*grant.members, "admin")}), "admin")
    oid = _declare(client, admin, name="Endorsed by the Ministry").get_json()["id"]
    for decision in ("approve", "reject"):
        resp = client.post(f"/admin/offerings/{oid}", headers=admin, json={"decision": decision, "comment": "c"})
        assert resp.status_code == 403 and resp.get_json()["error"]["code"] == "own_declaration"
    assert client.get(f"/public/grants/{GRANT}?format=json").get_json()["offerings"] == []
    other = {"Authorization": f"Bearer {services.tokens.create('root')}"}
    roles = services.policies.roles()
    services.policies.apply_roles(roles.model_copy(update={"admins": (*roles.admins, "root")}), "admin")
    assert client.post(f"/admin/offerings/{oid}", headers=other, json={"decision": "approve"}).status_code == 200
