"""The public disclosure register through the real Flask app: no login, nothing private leaks."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest

from sandbox.disclosure import released_products
from sandbox.services import Services
from sandbox.wiring import export_deps

DEMO = "g-2026-001"
GRANT_FIELDS = {"id", "operator", "use", "mode", "purpose", "datasets", "valid_from", "valid_until", "status",
                "status_changed", "status_reason", "reviewers_required", "check_overrides", "applied"}


def _grant(client, grant_id: str = DEMO) -> dict:  # noqa: ANN001
    resp = client.get("/public/grants.json")
    assert resp.status_code == 200
    return next(g for g in resp.get_json()["grants"] if g["id"] == grant_id)


def _csv(client, year: object) -> list[dict]:  # noqa: ANN001
    resp = client.get(f"/public/grants.csv?year={year}")
    assert resp.status_code == 200
    assert resp.mimetype == "text/csv"
    assert f'filename="grants-{year}.csv"' in resp.headers["Content-Disposition"]
    return list(csv.DictReader(io.StringIO(resp.get_data(as_text=True))))


def _apply_other(services: Services, grant_id: str, valid_from: dt.date, valid_until: dt.date) -> None:
    demo = services.policies.grant(DEMO)
    services.policies.apply_grant(demo.model_copy(update={
        "id": grant_id, "operator": "Beta Insights GmbH", "members": ("frank",), "use": "commercial",
        "purpose": "Labour market dashboards", "valid_from": valid_from, "valid_until": valid_until,
    }), "admin")


def test_root_redirects_to_the_register(client) -> None:  # noqa: ANN001
    resp = client.get("/public/")
    assert resp.status_code in (301, 302, 303, 307, 308)
    assert resp.headers["Location"].endswith("/public/grants")


def test_json_lists_the_demo_grant_with_public_fields_only(client) -> None:  # noqa: ANN001
    resp = client.get("/public/grants.json")  # no Authorization header: the register needs no login
    assert resp.status_code == 200
    body = resp.get_json()
    assert set(body) == {"as_of", "grants", "released_products"}
    grant = _grant(client)
    assert set(grant) == GRANT_FIELDS
    assert grant["operator"] == "Acme Health Analytics Ltd."
    assert grant["purpose"] == "Community health service planning"
    assert (grant["mode"], grant["use"], grant["reviewers_required"]) == ("scenario", "public_welfare", 2)
    assert (grant["valid_from"], grant["valid_until"]) == ("2026-01-01", "2027-12-31")
    assert grant["status"] == "active" and grant["status_changed"] is None
    nhanes = next(d for d in grant["datasets"] if d["id"] == "nhanes_2017")
    assert nhanes["title"] == "NHANES 2017-2018 demographics and examination"
    assert "income_ratio" in nhanes["columns"] and "seqn" not in nhanes["columns"]
    assert resp.headers["Cache-Control"] == "no-cache"


def test_no_member_names_budgets_or_reasons_leak(client, services: Services) -> None:  # noqa: ANN001
    services.ledger.charge(grant_id=DEMO, user="alice", query_id="q-leak-test", epsilon=0.75,
                           max_epsilon_per_query=1.0, cache_key="k-leak-test", audit_detail={},
                           dataset=services.policies.datasets()["nhanes_2017"],
                           operator=services.policies.grant(DEMO).operator)
    services.policies.set_status(DEMO, "suspended", "admin", reason="bob shared a screenshot")
    pages = [client.get(path).get_data(as_text=True)
             for path in ("/public/grants", "/public/grants.json", "/public/grants.csv?year=2026")]
    for text in pages:
        for secret in ("alice", "bob", "screenshot", "epsilon", "budget", "0.75", "9.25", "10.0", "1e-06"):
            assert secret not in text.lower(), f"{secret!r} leaked"
    assert "Acme Health Analytics Ltd." in pages[0]


def test_revocation_shows_on_the_next_request_with_its_date(client, services: Services) -> None:  # noqa: ANN001
    assert _grant(client)["status"] == "active"
    services.policies.set_status(DEMO, "revoked", "admin", reason="breach")
    grant = _grant(client)
    assert grant["status"] == "revoked"
    assert grant["status_changed"] == dt.datetime.now(dt.UTC).date().isoformat()
    html = client.get("/public/grants").get_data(as_text=True)
    assert "revoked" in html and f'datetime="{grant["status_changed"]}"' in html


def test_suspension_shows_with_its_date(client, services: Services) -> None:  # noqa: ANN001
    services.policies.set_status(DEMO, "suspended", "admin")
    grant = _grant(client)
    assert grant["status"] == "suspended"
    assert grant["status_changed"] == dt.datetime.now(dt.UTC).date().isoformat()


def test_expiry_and_pending_follow_the_date(client, services: Services) -> None:  # noqa: ANN001
    services.settings.today = lambda: dt.date(2028, 1, 1)
    body = client.get("/public/grants.json").get_json()
    assert body["as_of"] == "2028-01-01"
    assert _grant(client)["status"] == "expired"
    assert _grant(client)["status_changed"] is None
    services.settings.today = lambda: dt.date(2025, 12, 31)
    assert _grant(client)["status"] == "pending"


def test_html_is_accessible_and_needs_no_javascript(client) -> None:  # noqa: ANN001
    resp = client.get("/public/grants")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    html = resp.get_data(as_text=True)
    assert '<html lang="en">' in html
    assert 'href="#content"' in html and 'id="content"' in html
    assert "<caption>Grants (1)</caption>" in html
    assert '<th scope="col">Operator</th>' in html and f'<th scope="row" class="nowrap">{DEMO}</th>' in html
    assert "<script" not in html
    for text in ("Acme Health Analytics Ltd.", "Community health service planning", "Public welfare",
                 "NHANES 2017-2018 demographics and examination", "2027-12-31", "No data product has been released"):
        assert text in html


def test_html_escapes_what_admins_wrote(client, services: Services) -> None:  # noqa: ANN001
    demo = services.policies.grant(DEMO)
    services.policies.apply_grant(demo.model_copy(update={"id": "g-xss", "purpose": "<script>x()</script>"}),
                                  "admin")
    html = client.get("/public/grants").get_data(as_text=True)
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_csv_lists_grants_in_force_during_the_year(client, services: Services) -> None:  # noqa: ANN001
    _apply_other(services, "g-2028-002", dt.date(2028, 3, 1), dt.date(2028, 12, 31))
    assert [r["grant"] for r in _csv(client, 2026)] == [DEMO]
    assert [r["grant"] for r in _csv(client, 2027)] == [DEMO]
    assert [r["grant"] for r in _csv(client, 2028)] == ["g-2028-002"]
    assert _csv(client, 2025) == []
    row = _csv(client, 2026)[0]
    assert (row["operator"], row["use"], row["status"], row["valid_until"]) == (
        "Acme Health Analytics Ltd.", "Public welfare", "active", "2027-12-31")
    assert "NHANES 2017-2018 demographics and examination (nhanes_2017): sex, age" in row["datasets"]


def test_csv_leaves_out_a_grant_revoked_before_the_year(client, services: Services) -> None:  # noqa: ANN001
    _apply_other(services, "g-long", dt.date(2026, 1, 1), dt.date(2099, 12, 31))
    services.policies.set_status("g-long", "revoked", "admin")
    this_year = dt.datetime.now(dt.UTC).year
    assert "g-long" in [r["grant"] for r in _csv(client, this_year)]
    assert "g-long" not in [r["grant"] for r in _csv(client, this_year + 1)]


def test_csv_neutralizes_spreadsheet_formulas(client, services: Services) -> None:  # noqa: ANN001
    demo = services.policies.grant(DEMO)
    services.policies.apply_grant(demo.model_copy(update={"id": "g-formula", "purpose": "=HYPERLINK(1)"}), "admin")
    row = next(r for r in _csv(client, 2026) if r["grant"] == "g-formula")
    assert row["purpose"] == "'=HYPERLINK(1)"


@pytest.mark.parametrize("year", ["20x6", "26", "-1", "2026.0"])
def test_csv_refuses_a_bad_year(client, year: str) -> None:  # noqa: ANN001
    resp = client.get(f"/public/grants.csv?year={year}")
    assert resp.status_code == 400
    assert resp.get_json()["error"]["code"] == "bad_year"


def test_csv_defaults_to_the_current_year(client, services: Services) -> None:  # noqa: ANN001
    services.settings.today = lambda: dt.date(2027, 6, 1)
    resp = client.get("/public/grants.csv")
    assert 'filename="grants-2027.csv"' in resp.headers["Content-Disposition"]


def test_released_products_appear_once_downloaded(client, services: Services) -> None:  # noqa: ANN001
    workflow = pytest.importorskip("sandbox.exports.workflow")
    table = b"sex,n\nfemale,4180\nmale,4016\n"
    uploads = pytest.importorskip("sandbox.exports.uploads")
    deps = export_deps(services)
    rid = uploads.submit(deps, "alice", grant_id=DEMO, title="Respondents by sex",
                         justification="for the health plan", files=[("by_sex.csv", table)])
    for reviewer in ("carol", "dave"):
        workflow.review(deps, rid, reviewer, "approve", "checked by hand")
    assert released_products(services.db) == []  # approved is not yet released
    workflow.download(deps, rid, "by_sex.csv", "alice")
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert released_products(services.db) == [{"title": "Respondents by sex", "date": today, "grant": DEMO}]
    body = client.get("/public/grants.json").get_json()
    assert body["released_products"] == [{"title": "Respondents by sex", "date": today, "grant": DEMO}]
    html = client.get("/public/grants").get_data(as_text=True)
    assert "Respondents by sex" in html and "by_sex.csv" not in html and "4180" not in html
    assert json.dumps(body).count("alice") == 0
    row = next(r for r in _csv(client, today[:4]) if r["grant"] == DEMO)
    assert row["released_products"] == f"{today} Respondents by sex"
