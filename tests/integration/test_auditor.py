"""The audit authority's read-only role. Attacks: the auditor tries every mutating route and the data API;
a user who is not an auditor tries the audit views; tampering must show on the verify page."""

from __future__ import annotations

import io
import json
import re
import sqlite3

import pytest
from werkzeug.routing import Rule

from sandbox import cases
from sandbox.errors import PolicyError
from sandbox.policy.models import Roles
from sandbox.services import Services

MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
# routes that do not use the caller's credential to change shared state: signing in or out sets the
# caller's own cookie; the public forms are open to anyone without login (an auditor is the public there)
NOT_CREDENTIALED = {"review.login_post", "review.logout", "auditor.login_post", "auditor.logout",
                    "cases.file_request", "cases.file_feedback"}


@pytest.fixture
def erin(services: Services) -> dict[str, str]:
    return {"Authorization": f"Bearer {services.tokens.create('erin')}"}


def _snapshot(services: Services) -> dict[str, list]:
    """Every row of every table except the audit log (checked separately) and the monitor's read cursor."""
    conn = services.db.conn
    tables = [r["name"] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    skip = ("audit", "monitor_cursor")
    return {t: [tuple(r) for r in conn.execute(f'SELECT * FROM "{t}"')] for t in tables if t not in skip}


def _fill(rule: Rule, values: dict[str, str]) -> str:
    path = rule.rule
    for arg in rule.arguments:
        path = re.sub(rf"<(?:[a-z]+:)?{arg}>", values.get(arg, "x"), path)
    return path


def test_auditor_reads_the_audit_log_with_filters(client, services: Services, erin, alice) -> None:  # noqa: ANN001
    client.post("/v1/query", headers=alice, json={"sql": "SELECT seqn FROM nhanes_2017", "epsilon": 0.1,
                                                  "grant": "g-2026-001"})
    client.post("/v1/query", headers=alice, json={"sql": "SELECT COUNT(*) FROM nhanes_2017", "epsilon": 0.1,
                                                  "grant": "g-2026-001"})
    page = client.get("/auditor/audit?format=json", headers=erin).get_json()
    assert page["total"] == len(list(services.audit.entries())) and page["entries"][0]["seq"] == page["total"]
    refused = client.get("/auditor/audit?format=json&action=query.refused", headers=erin).get_json()
    assert refused["total"] == 1 and refused["entries"][0]["detail"]["code"] == "id_column"
    by_prefix = client.get("/auditor/audit?format=json&action=query.*&actor=alice", headers=erin).get_json()
    assert {e["action"] for e in by_prefix["entries"]} == {"query.refused", "query.charged", "query.answered"}
    by_grant = client.get("/auditor/audit?format=json&grant=g-2026-001&action=grant.created", headers=erin)
    assert by_grant.get_json()["total"] == 1
    today = services.today().isoformat()
    assert client.get(f"/auditor/audit?format=json&since={today}&until={today}", headers=erin).get_json()["total"] \
        == page["total"]
    assert client.get("/auditor/audit?format=json&until=2000-01-01", headers=erin).get_json()["total"] == 0
    # LIKE wildcards in the filter are literal
    assert client.get("/auditor/audit?format=json&action=%25", headers=erin).get_json()["total"] == 0
    assert client.get("/auditor/audit?format=json&action=_*", headers=erin).get_json()["total"] == 0
    assert client.get("/auditor/audit?format=json&limit=2&offset=1", headers=erin).get_json()["entries"][0]["seq"] \
        == page["total"] - 1
    for bad in ("since=yesterday", "limit=0", "limit=5000", "offset=-1"):
        resp = client.get(f"/auditor/audit?format=json&{bad}", headers=erin)
        assert resp.status_code == 400, bad
    html = client.get("/auditor/audit?action=query.refused", headers=erin)
    assert html.status_code == 200 and "SELECT seqn FROM nhanes_2017" in html.get_data(as_text=True)


def test_verify_grants_usage_and_directory(client, services: Services, erin) -> None:  # noqa: ANN001
    services.policies.set_status("g-2026-001", "suspended", "admin", "inspection")
    verify = client.get("/auditor/audit/verify?format=json", headers=erin).get_json()
    assert verify["ok"] and verify["entries"] > 0
    grants = client.get("/auditor/grants?format=json", headers=erin).get_json()["grants"]
    assert grants[0]["id"] == "g-2026-001" and grants[0]["status"] == "suspended"
    assert grants[0]["status_reason"] == "inspection" and grants[0]["members"] == ["alice", "bob"]
    history = client.get("/auditor/grants/g-2026-001?format=json", headers=erin).get_json()["history"]
    assert [h["action"] for h in history] == ["grant.created", "grant.suspended"]
    assert client.get("/auditor/grants/nope?format=json", headers=erin).status_code == 404
    usage = client.get("/auditor/usage?format=json&period=2026-12", headers=erin).get_json()
    assert usage["period"] == "2026-12" and usage["statements"][0]["grant"] == "g-2026-001"
    assert client.get("/auditor/usage?format=json&period=12-2026", headers=erin).status_code == 400
    directory = client.get("/auditor/directory?format=json", headers=erin).get_json()
    assert {d["id"] for d in directory["datasets"]} == {"adult_income", "nhanes_2017"}
    for page in ("/auditor/", "/auditor/audit", "/auditor/audit/verify", "/auditor/grants",
                 "/auditor/grants/g-2026-001", "/auditor/usage?period=2026-12", "/auditor/directory"):
        resp = client.get(page, headers=erin)
        assert resp.status_code == 200 and resp.mimetype == "text/html", page
        forms = re.findall(r'<form method="post" action="([^"]+)"', resp.get_data(as_text=True))
        assert forms == ["/auditor/logout"], (page, forms)  # nothing on these pages can change state


def test_verify_shows_tampering(client, services: Services, erin) -> None:  # noqa: ANN001
    conn = sqlite3.connect(services.db.path)
    conn.execute("UPDATE audit SET actor = 'someone-else' WHERE seq = 2")
    conn.commit()
    conn.close()
    verify = client.get("/auditor/audit/verify?format=json", headers=erin).get_json()
    assert not verify["ok"] and any("entry 2" in p for p in verify["problems"])
    html = client.get("/auditor/audit/verify", headers=erin).get_data(as_text=True)
    assert 'role="alert"' in html and "entry 2" in html


def test_only_auditors_and_admins_read(client, services: Services, alice, mallory) -> None:  # noqa: ANN001
    reviewer = {"Authorization": f"Bearer {services.tokens.create('carol')}"}
    for who in (alice, mallory, reviewer):
        for page in ("/auditor/?format=json", "/auditor/audit?format=json", "/auditor/grants?format=json",
                     "/auditor/usage?format=json", "/auditor/audit/verify?format=json"):
            resp = client.get(page, headers=who)
            assert resp.status_code == 403 and resp.get_json()["error"]["code"] == "not_auditor", page
    assert client.get("/auditor/audit?format=json").status_code == 401
    assert client.get("/auditor/audit").status_code == 302  # a browser is sent to sign in
    admin = {"Authorization": f"Bearer {services.tokens.create('admin')}"}
    assert client.get("/auditor/audit?format=json", headers=admin).status_code == 200


def test_auditor_has_no_data_access(client, services: Services, erin) -> None:  # noqa: ANN001
    body = {"sql": "SELECT COUNT(*) AS n FROM nhanes_2017", "epsilon": 0.5}
    for sent in (body, {**body, "grant": "g-2026-001"}):
        resp = client.post("/v1/query", headers=erin, json=sent)
        assert resp.status_code == 403 and resp.get_json()["error"]["code"] == "auditor_no_data_access"
    refused = [e for e in services.audit.entries() if e["action"] == "query.refused" and e["actor"] == "erin"]
    assert len(refused) == 2
    assert client.get("/v1/catalog", headers=erin).status_code == 403
    assert client.get("/v1/budget", headers=erin).get_json()["error"]["code"] == "auditor_no_data_access"
    upload = {"files": (io.BytesIO(b"a,b\n1,2\n"), "t.csv"), "grant": "g-2026-001", "title": "t",
              "justification": "j"}
    resp = client.post("/v1/exports", headers=erin, data=upload, content_type="multipart/form-data")
    assert resp.status_code == 403 and resp.get_json()["error"]["code"] == "auditor_no_data_access"
    assert services.ledger.state("g-2026-001").epsilon_spent == 0


def test_auditor_cannot_write_through_any_route(app, client, services: Services, erin, alice) -> None:  # noqa: ANN001
    """Every mutating route of the app, with the auditor's credential, is refused and changes nothing."""
    # real objects for the routes to act on: an export request of alice's, a case, an alert
    upload = {"files": (io.BytesIO(b"a,b\n1,2\n"), "t.csv"), "grant": "g-2026-001", "title": "t",
              "justification": "j"}
    export = client.post("/v1/exports", headers=alice, data=upload, content_type="multipart/form-data")
    export_id = export.get_json()["id"] if export.status_code == 201 else "x"
    case_id = cases.file_public(services, "complaint", {"subject": "s", "message": "m"}, "10.1.1.1")
    from sandbox import monitoring

    alert_id = monitoring.raise_alert(services, "manual", "test", None, None, "a test alert", {})
    from sandbox import offerings

    offering_id = offerings.declare(services, "alice", {"grant": "g-2026-001", "kind": "product", "name": "n",
                                                        "description": "d"})
    values = {"request_id": export_id, "case_id": case_id, "alert_id": str(alert_id), "name": "t.csv",
              "grant_id": "g-2026-001", "user": "alice", "offering_id": str(offering_id)}
    before = _snapshot(services)
    seq_before = services.db.read("SELECT MAX(seq) AS s FROM audit")[0]["s"]
    tried = []
    for rule in app.url_map.iter_rules():
        methods = (rule.methods or set()) & MUTATING
        if not methods or rule.endpoint in NOT_CREDENTIALED or rule.endpoint == "static":
            continue
        path = _fill(rule, values)
        for method in sorted(methods):
            for kwargs in ({"json": {"decision": "approve", "action": "close", "response": "r", "reason": "r",
                                     "grant": "g-2026-001", "sql": "SELECT COUNT(*) FROM nhanes_2017",
                                     "epsilon": 0.5, "dataset": "nhanes_2017", "subject": "s",
                                     "message": "m", "kind": "product", "name": "n", "description": "d"}},
                           {"data": {"csrf_token": "x", "decision": "approve", "action": "ack"}}):
                resp = client.open(path, method=method, headers=erin, **kwargs)
                tried.append((rule.endpoint, resp.status_code))
                assert resp.status_code in (400, 401, 403, 404, 405, 409), (rule.endpoint, path, resp.status_code)
    assert len({e for e, _ in tried}) >= 10, tried
    assert _snapshot(services) == before
    new = services.db.read("SELECT action FROM audit WHERE seq > ?", (seq_before,))
    # only refusals (query.refused, export.upload_refused, ...) and what monitoring makes of them
    actions = {r["action"] for r in new}
    assert all(a.endswith("refused") or a in ("auth.bad_token", "alert.raised") for a in actions), actions


def test_auditor_listed_in_a_grant_still_has_no_data_access(client, services: Services, erin) -> None:  # noqa: ANN001
    grant = services.policies.grant("g-2026-001")
    listed = grant.model_copy(update={"members": (*grant.members, "erin")})
    for apply in (services.policies.plan_grant, lambda g: services.policies.apply_grant(g, "admin")):
        with pytest.raises(PolicyError, match="auditor"):
            apply(listed)
    # a grant that lists an auditor anyway (roles changed after it was applied): every route refuses
    with services.db.write() as conn:
        conn.execute("UPDATE grants SET body = ? WHERE id = ?",
                     (json.dumps(listed.model_dump(mode="json")), grant.id))
    sql = {"sql": "SELECT COUNT(*) AS n FROM nhanes_2017", "epsilon": 0.5, "grant": "g-2026-001"}
    calls = [("post", "/v1/query", sql), ("post", "/v1/plan", sql), ("get", "/v1/budget", None),
             ("get", "/v1/catalog", None), ("get", "/v1/exports", None),
             ("get", "/v1/offerings?grant=g-2026-001", None),
             ("post", "/v1/offerings", {"grant": "g-2026-001", "kind": "product", "name": "n", "description": "d"}),
             ("post", "/v1/cases/data-quality", {"grant": "g-2026-001", "dataset": "nhanes_2017", "subject": "s",
                                                 "message": "m"})]
    for method, path, body in calls:
        resp = getattr(client, method)(path, headers=erin, json=body)
        assert resp.status_code == 403 and resp.get_json()["error"]["code"] == "auditor_no_data_access", path
    services.settings.internal_token = "internal-secret"
    resp = client.get("/v1/internal/spawn-check/erin", headers={"Authorization": "Bearer internal-secret"})
    assert resp.get_json()["grants"] == []
    assert services.ledger.state("g-2026-001").epsilon_spent == 0


def test_auditors_cannot_hold_other_roles() -> None:
    with pytest.raises(ValueError, match="cannot also be reviewers or admins"):
        Roles(reviewers=("erin",), auditors=("erin",))
    with pytest.raises(ValueError):
        Roles(admins=("erin",), auditors=("erin",))
    assert PolicyError  # the loader turns the ValueError into a PolicyError naming the file


def test_auditor_signs_in_with_a_browser_form(client, services: Services) -> None:  # noqa: ANN001
    token = services.tokens.create("erin")
    resp = client.post("/auditor/login", data={"token": "wrong"})
    assert resp.status_code == 401
    resp = client.post("/auditor/login", data={"token": token})
    assert resp.status_code == 303 and "HttpOnly" in resp.headers["Set-Cookie"]
    assert "SameSite=Strict" in resp.headers["Set-Cookie"]
    assert client.get("/auditor/grants").status_code == 200
