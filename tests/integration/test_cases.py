"""Tracked cases: public requests to open data, feedback and complaints, operators' data-quality reports,
and the authority's handling. Attacks: forged forms, floods, oversize text, leaks of what the filer wrote,
handling by someone who is not the authority, illegal transitions."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from sandbox import cases
from sandbox.services import Services
from sandbox.state import cases_store


def _form(client, page: str = "/public/requests") -> str:  # noqa: ANN001
    resp = client.get(page)
    assert resp.status_code == 200
    match = re.search(r'name="csrf_token" value="([^"]+)"', resp.get_data(as_text=True))
    assert match
    return match.group(1)


def _request(**extra: str) -> dict:
    return {"dataset": "nhanes_2017", "subject": "Open the age table", "message": "We need it for a school project.",
            "contact": "someone@example.org", **extra}


def test_open_request_through_the_form_is_tracked_publicly(client, services: Services) -> None:  # noqa: ANN001
    token = _form(client)
    resp = client.post("/public/requests", data={**_request(), "csrf_token": token})
    assert resp.status_code == 303
    case_id = resp.headers["Location"].split("/public/cases/")[1].split("?")[0]
    page = client.get(f"/public/cases/{case_id}")
    assert page.status_code == 200 and "Open the age table" in page.get_data(as_text=True)
    listed = client.get("/public/requests.json").get_json()["requests"]
    assert [r["id"] for r in listed] == [case_id] and listed[0]["status"] == "open"
    # the message and the contact are never published, anywhere
    for url in ("/public/requests.json", f"/public/cases/{case_id}?format=json", "/public/requests",
                f"/public/cases/{case_id}", "/public/cases.json"):
        text = client.get(url).get_data(as_text=True)
        assert "school project" not in text and "someone@example.org" not in text, url
    # the filing is audited, without the message or the contact
    entry = [e for e in services.audit.entries() if e["action"] == "case.filed"][-1]
    assert entry["detail"]["case"] == case_id and "message" not in entry["detail"]
    assert "someone@example.org" not in str(entry)


def test_forms_need_a_valid_csrf_token(client) -> None:  # noqa: ANN001
    assert client.post("/public/requests", data=_request()).status_code == 403
    assert client.post("/public/requests", data={**_request(), "csrf_token": "forged"}).status_code == 403
    token = _form(client)
    # a token without its cookie (another browser, another site) is refused
    other = client.application.test_client()
    resp = other.post("/public/requests", data={**_request(), "csrf_token": token})
    assert resp.status_code == 403 and resp.get_json()["error"]["code"] == "bad_csrf"
    # a tampered token is refused
    resp = client.post("/public/requests", data={**_request(), "csrf_token": token[:-2] + "xx"})
    assert resp.status_code == 403
    assert client.get("/public/requests.json").get_json()["requests"] == []


def test_json_filing_and_validation(client) -> None:  # noqa: ANN001
    resp = client.post("/public/requests", json=_request())
    assert resp.status_code == 201
    item = resp.get_json()
    assert item["status"] == "open" and item["dataset"] == "nhanes_2017" and "message" not in item
    bad = [
        ({**_request(), "dataset": "nope"}, 400, "unknown_dataset"),
        ({**_request(), "dataset": None}, 400, "missing_dataset"),
        ({**_request(), "subject": " "}, 400, "missing_subject"),
        ({**_request(), "message": "x" * 4001}, 400, "bad_message"),
        ({**_request(), "subject": "x" * 201}, 400, "bad_subject"),
        ({**_request(), "contact": "x" * 201}, 400, "bad_contact"),
    ]
    for body, status, code in bad:
        resp = client.post("/public/requests", json=body)
        assert (resp.status_code, resp.get_json()["error"]["code"]) == (status, code), body
    resp = client.post("/public/feedback", json={**_request(), "kind": "open_request"})
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "bad_kind"


def test_already_open_resources_are_not_requested(client, services: Services) -> None:  # noqa: ANN001
    ds = services.policies.datasets()["adult_income"].model_copy(update={"id": "adult_open", "classification": "L1"})
    services.policies.apply_dataset(ds, "test")
    resp = client.post("/public/requests", json=_request(dataset="adult_open"))
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "already_open"


def test_flood_from_one_address_is_rate_limited(client, services: Services) -> None:  # noqa: ANN001
    limit = services.settings.oversight.public_filings_per_client_hour
    for i in range(limit):
        resp = client.post("/public/feedback", json={**_request(subject=f"s{i}"), "kind": "feedback"})
        assert resp.status_code == 201
    resp = client.post("/public/feedback", json={**_request(), "kind": "complaint"})
    assert resp.status_code == 429 and resp.get_json()["error"]["code"] == "rate_limited"
    # another address may still file, until the global cap
    other = {"REMOTE_ADDR": "10.9.8.7"}
    assert client.post("/public/requests", json=_request(), environ_base=other).status_code == 201
    services.settings.oversight.public_filings_per_hour = limit + 1
    resp = client.post("/public/requests", json=_request(), environ_base={"REMOTE_ADDR": "10.9.8.8"})
    assert resp.status_code == 429
    assert services.db.read("SELECT COUNT(*) AS n FROM cases")[0]["n"] == limit + 1


def test_authority_handles_a_case_and_the_register_counts_it(client, services: Services, alice) -> None:  # noqa: ANN001
    admin = {"Authorization": f"Bearer {services.tokens.create('admin')}"}
    case_id = client.post("/public/feedback", json={**_request(), "kind": "complaint"}).get_json()["id"]
    # not the authority: refused, nothing changes
    for who in (alice, {}):
        resp = client.post(f"/admin/cases/{case_id}", headers=who, json={"action": "close", "response": "no"})
        assert resp.status_code in (401, 403)
        assert client.get(f"/admin/cases/{case_id}?format=json", headers=who).status_code in (401, 403)
    assert client.get("/admin/cases", headers=alice).status_code == 403
    # closing needs a response first; an illegal transition is 409
    resp = client.post(f"/admin/cases/{case_id}", headers=admin, json={"action": "close"})
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "response_required"
    resp = client.post(f"/admin/cases/{case_id}", headers=admin, json={"action": "reopen"})
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "illegal_transition"
    resp = client.post(f"/admin/cases/{case_id}", headers=admin, json={"action": "assign", "owner": "alice"})
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "bad_owner"
    item = client.post(f"/admin/cases/{case_id}", headers=admin, json={"action": "assign"}).get_json()
    assert item["status"] == "in_progress" and item["owner"] == "admin" and item["body"].startswith("We need")
    item = client.post(f"/admin/cases/{case_id}", headers=admin,
                       json={"action": "respond", "response": "We looked into it."}).get_json()
    assert item["status"] == "answered"
    item = client.post(f"/admin/cases/{case_id}", headers=admin, json={"action": "close"}).get_json()
    assert item["status"] == "closed" and item["closed_at"]
    assert [e["action"] for e in item["events"]] == ["file", "assign", "respond", "close"]
    resp = client.post(f"/admin/cases/{case_id}", headers=admin, json={"action": "respond", "response": "x"})
    assert resp.status_code == 409
    public = client.get(f"/public/cases/{case_id}?format=json").get_json()
    assert public["status"] == "closed" and public["response"] == "We looked into it."
    stats = client.get("/public/cases.json").get_json()["statistics"]
    assert stats["complaint"]["total"] == 1 and stats["complaint"]["closed"] == 1
    assert stats["complaint"]["median_days_to_close"] is not None
    actions = [e["action"] for e in services.audit.entries() if e["action"].startswith("case.")]
    assert actions == ["case.filed", "case.assigned", "case.answered", "case.closed"]
    assert services.audit.verify().ok


def test_median_time_to_close(services: Services) -> None:
    ids = [cases.file_public(services, "feedback", {"subject": "s", "message": "m"}, f"10.0.0.{i}") for i in range(3)]
    for case_id, days in zip(ids, (1, 3, 10), strict=True):
        cases.act(services, case_id, "admin", "respond", response="thanks")
        cases.act(services, case_id, "admin", "close")
        with services.db.write() as conn:  # backdate the filing to measure a known duration
            row = cases_store.get(conn, case_id)
            closed = dt.datetime.fromisoformat(row["closed_at"])
            cases_store.update(conn, case_id, created_at=(closed - dt.timedelta(days=days)).isoformat())
    stats = cases.statistics_by_kind(services)
    assert stats["feedback"]["median_days_to_close"] == 3.0
    assert stats["feedback"]["closed"] == 3 and stats["complaint"]["total"] == 0


def test_operator_data_quality_report(client, services: Services, alice, mallory) -> None:  # noqa: ANN001
    body = {"grant": "g-2026-001", "dataset": "nhanes_2017", "subject": "height_cm has zeros",
            "message": "Several rows look wrong."}
    resp = client.post("/v1/cases/data-quality", headers=alice, json=body)
    assert resp.status_code == 201 and resp.get_json()["kind"] == "data_quality"
    assert client.post("/v1/cases/data-quality", json=body).status_code == 401
    resp = client.post("/v1/cases/data-quality", headers=mallory, json=body)
    assert resp.status_code == 403
    resp = client.post("/v1/cases/data-quality", headers=alice, json={**body, "dataset": "other"})
    assert resp.status_code == 400
    services.policies.set_status("g-2026-001", "suspended", "test", "check")
    assert client.post("/v1/cases/data-quality", headers=alice, json=body).status_code == 403
    entry = [e for e in services.audit.entries() if e["action"] == "case.filed"][-1]
    assert entry["actor"] == "alice" and entry["grant_id"] == "g-2026-001"


@pytest.mark.parametrize("case_id", ["c-0000000000000000", "../x", "nope"])
def test_unknown_cases_are_404(client, case_id: str) -> None:  # noqa: ANN001
    assert client.get(f"/public/cases/{case_id}").status_code == 404


def test_cases_from_the_cli(services: Services) -> None:
    from click.testing import CliRunner

    from sandbox.cli import cli

    case_id = cases.file_public(services, "open_request", _request(), "10.2.2.2")
    runner = CliRunner()
    env = {"SANDBOX_STATE": str(services.db.dir)}
    out = runner.invoke(cli, ["cases", "list", "--actor", "admin"], env=env)
    assert out.exit_code == 0 and case_id in out.output and "open_request" in out.output
    assert runner.invoke(cli, ["cases", "list", "--actor", "alice"], env=env).exit_code == 1
    shown = runner.invoke(cli, ["cases", "show", case_id, "--actor", "admin"], env=env)
    assert "someone@example.org" in shown.output  # the authority sees the contact
    out = runner.invoke(cli, ["cases", "act", case_id, "respond", "--actor", "admin", "--response", "Opened in 2027"],
                        env=env)
    assert out.exit_code == 0 and f"{case_id}: answered" in out.output
    out = runner.invoke(cli, ["cases", "act", case_id, "close", "--actor", "admin"], env=env)
    assert out.exit_code == 0 and cases.public_case(services, case_id)["status"] == "closed"
    assert runner.invoke(cli, ["cases", "act", case_id, "close", "--actor", "admin"], env=env).exit_code == 1


def _sign_in(client, services: Services, user: str) -> None:  # noqa: ANN001
    token = services.tokens.create(user)
    assert client.post("/review/login", data={"token": token, "next": "/review/"}).status_code == 303


def test_authority_pages_with_forms(client, services: Services) -> None:  # noqa: ANN001
    case_id = cases.file_public(services, "complaint", _request(), "10.3.3.3")
    assert client.get("/admin/cases").status_code == 302  # a browser without a session signs in first
    _sign_in(client, services, "admin")
    page = client.get("/admin/cases").get_data(as_text=True)
    assert "Open the age table" in page and case_id in page
    html = client.get(f"/admin/cases/{case_id}").get_data(as_text=True)
    assert "someone@example.org" in html and "We need it for a school project." in html
    token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    # a forged or missing token is refused and changes nothing
    for bad in ({}, {"csrf_token": "forged"}):
        resp = client.post(f"/admin/cases/{case_id}", data={"action": "respond", "response": "x", **bad})
        assert resp.status_code == 403
    assert cases.public_case(services, case_id)["status"] == "open"
    resp = client.post(f"/admin/cases/{case_id}", data={"csrf_token": token, "action": "respond",
                                                        "response": "Fixed in the next release", "owner": ""})
    assert resp.status_code == 303
    resp = client.post(f"/admin/cases/{case_id}", data={"csrf_token": token, "action": "close"})
    assert resp.status_code == 303 and cases.public_case(services, case_id)["status"] == "closed"
    assert "This case is closed." in client.get(f"/admin/cases/{case_id}").get_data(as_text=True)


def test_authority_pages_refuse_other_users(client, services: Services) -> None:  # noqa: ANN001
    case_id = cases.file_public(services, "complaint", _request(), "10.4.4.4")
    _sign_in(client, services, "carol")  # a reviewer, not an admin
    for url in ("/admin/cases", f"/admin/cases/{case_id}", "/admin/offerings", "/admin/alerts/"):
        assert client.get(url).status_code == 403, url
    html = client.get("/review/").get_data(as_text=True)  # carol's own CSRF token does not help
    token = re.search(r'name="csrf_token" value="([^"]+)"', html)
    data = {"action": "close", "response": "x", **({"csrf_token": token.group(1)} if token else {})}
    assert client.post(f"/admin/cases/{case_id}", data=data).status_code == 403
    assert cases.public_case(services, case_id)["status"] == "open"


def test_forwarded_headers_do_not_bypass_the_limit_and_text_is_escaped(client, services: Services) -> None:  # noqa: ANN001
    limit = services.settings.oversight.public_filings_per_client_hour
    for i in range(limit):
        resp = client.post("/public/requests", json=_request(subject=f"<script>alert({i})</script>"),
                           headers={"X-Forwarded-For": f"192.0.2.{i}", "X-Real-IP": f"192.0.2.{i}"})
        assert resp.status_code == 201
    resp = client.post("/public/requests", json=_request(), headers={"X-Forwarded-For": "198.51.100.7"})
    assert resp.status_code == 429
    html = client.get("/public/requests").get_data(as_text=True)
    assert "<script>alert(" not in html and "&lt;script&gt;alert(0)&lt;/script&gt;" in html
