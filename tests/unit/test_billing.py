"""Billing regression tests: effective-dated terms, no charge for suspended, revoked or out-of-policy days,
public-welfare conditions, exports withdrawn by the authority, price ceilings, the published schedule."""

from __future__ import annotations

import csv
import datetime as dt
import io
import sqlite3
from contextlib import closing
from decimal import Decimal
from pathlib import Path

import pytest

from sandbox import offerings
from sandbox.billing import Timeline, classify_days, parse_change
from sandbox.policy import load_policies
from sandbox.policy.prices import PriceSchedule, load_prices
from sandbox.services import Services, Settings
from sandbox.state.grants_store import apply_policies
from sandbox.usage import format_csv, usage_report
from sandbox.wiring import usage_sources

POLICIES = Path(__file__).resolve().parents[2] / "policies"
DEMO = "g-2026-001"
PRICES = PriceSchedule(monthly_base=Decimal("310.00"), per_query=Decimal("1.00"), per_epsilon=Decimal("10.00"),
                       per_export=Decimal("5.00"), per_notebook_hour=Decimal("2.00"))
DEC = (dt.datetime(2026, 12, 1, tzinfo=dt.UTC), dt.datetime(2027, 1, 1, tzinfo=dt.UTC))


def at(day: int, hour: int = 0, month: int = 12) -> dt.datetime:
    return dt.datetime(2026, month, day, hour, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def bodies() -> tuple[dict, dict]:
    policies = load_policies(POLICIES)
    grant = policies.grants[DEMO].model_copy(update={"use": "commercial"}).model_dump(mode="json")
    catalog = {k: v.model_dump(mode="json") for k, v in policies.datasets.items()}
    return grant, catalog


def _timeline(bodies: tuple[dict, dict], *changes: tuple[dt.datetime, dict]) -> Timeline:
    grant, catalog = bodies
    tl = Timeline(applied_at=at(1, month=11), catalog_now=dict(catalog))
    tl.grant_points.append((tl.applied_at, grant))
    current = dict(grant)
    for moment, update in changes:
        current = {**current, **update}
        tl.grant_points.append((moment, current))
    return tl


def test_currency_is_cny_unless_set() -> None:
    assert PRICES.currency == "CNY"
    assert load_prices(POLICIES / "prices.yaml").currency == "CNY"


def test_switch_to_public_welfare_on_the_last_day_frees_that_day_only(bodies) -> None:  # noqa: ANN001
    tl = _timeline(bodies, (at(31, 9), {"use": "public_welfare"}))
    days, reasons = classify_days(tl, *DEC, PRICES)
    assert len(days) == 30 and reasons == {"public_welfare": 1}
    assert days[-1] == dt.date(2026, 12, 30)


def test_a_change_is_never_applied_retroactively(bodies) -> None:  # noqa: ANN001
    """Welfare in November, commercial from 15 December: November free, December billed from the 15th."""
    tl = _timeline(bodies, (at(1, month=11), {"use": "public_welfare"}), (at(15, 12), {"use": "commercial"}))
    days, reasons = classify_days(tl, *DEC, PRICES)
    assert days[0] == dt.date(2026, 12, 16) and len(days) == 16 and reasons == {"public_welfare": 15}


def test_suspended_and_revoked_days_are_not_billed(bodies) -> None:  # noqa: ANN001
    tl = _timeline(bodies, (at(10, 12), {"status": "suspended"}), (at(20, 8), {"status": "active"}),
                   (at(25, 16), {"status": "revoked"}))
    days, reasons = classify_days(tl, *DEC, PRICES)
    # billed: 1-9, 21-24 (20 and 25 saw a suspension or revocation during the day)
    assert [d.day for d in days] == [*range(1, 10), *range(21, 25)]
    assert reasons == {"suspended": 11, "revoked": 7}


def test_out_of_policy_days_are_not_billed(bodies) -> None:  # noqa: ANN001
    tl = _timeline(bodies)
    # nhanes_2017 was reclassified L4 on 5 December; the catalog in force says L4
    tl.catalog_now["nhanes_2017"] = {**tl.catalog_now["nhanes_2017"], "classification": "L4"}
    tl.catalog_changes.append((at(5, 12), "nhanes_2017", [(["classification"], "L2", "L4")]))
    days, reasons = classify_days(tl, *DEC, PRICES)
    assert [d.day for d in days] == [1, 2, 3, 4] and reasons == {"out_of_policy": 27}


def test_days_before_application_and_outside_the_window_are_not_billed(bodies) -> None:  # noqa: ANN001
    grant, catalog = bodies
    tl = Timeline(applied_at=at(10, 15), catalog_now=dict(catalog))
    tl.grant_points.append((tl.applied_at, {**grant, "valid_until": "2026-12-20"}))
    days, reasons = classify_days(tl, *DEC, PRICES)
    assert [d.day for d in days] == list(range(10, 21))
    assert reasons == {"not_applied": 9, "outside_window": 11}


def test_public_welfare_conditions(bodies) -> None:  # noqa: ANN001
    welfare = {"use": "public_welfare", "purpose_category": "public_health"}
    tl = _timeline(bodies, (at(1, month=11), welfare))
    assert classify_days(tl, *DEC, PRICES)[1] == {"public_welfare": 31}
    # a priced product: the conditions are not met, every day is billed
    assert len(classify_days(tl, *DEC, PRICES, priced_products=True)[0]) == 31
    # a purpose category the schedule does not list
    tl = _timeline(bodies, (at(1, month=11), {**welfare, "purpose_category": "marketing"}))
    assert len(classify_days(tl, *DEC, PRICES)[0]) == 31
    # the schedule prices public welfare like commercial use
    tl = _timeline(bodies, (at(1, month=11), welfare))
    assert len(classify_days(tl, *DEC, PRICES.model_copy(update={"public_welfare": "standard"}))[0]) == 31


def test_diff_lines_parse_with_arrows_inside_values() -> None:
    assert parse_change('purpose: "a -> b" -> "c"') == (["purpose"], "a -> b", "c")
    assert parse_change("budget.epsilon: 10.0 -> 5.0") == (["budget", "epsilon"], 10.0, 5.0)


# -- through real state ----------------------------------------------------------------------------
@pytest.fixture
def svc(tmp_path: Path) -> Services:
    services = Services(Settings(state_dir=tmp_path / "state", data_root=tmp_path))
    policies = load_policies(POLICIES)
    apply_policies(services.policies, policies, "test")
    start = dt.datetime.now(dt.UTC).replace(day=1).date()
    commercial = policies.grants[DEMO].model_copy(update={
        "id": "g-com", "members": ("dave",), "use": "commercial", "purpose_category": "",
        "valid_from": start - dt.timedelta(days=60), "valid_until": start + dt.timedelta(days=400)})
    services.policies.apply_grant(commercial, "test")
    with closing(sqlite3.connect(services.db.path, isolation_level=None)) as raw:  # back-date (test setup)
        raw.execute("UPDATE grants SET applied_at = ?", ((start - dt.timedelta(days=40)).isoformat(),))
    return services


def test_exports_withdrawn_by_the_authority_are_never_billed(svc: Services) -> None:
    from sandbox.exports import uploads, workflow
    from sandbox.wiring import export_deps

    period = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    files = [("t.csv", b"sex,n\nfemale,30\nmale,40\n")]
    deps = export_deps(svc)
    kept = uploads.submit(deps, "dave", grant_id="g-com", title="kept", justification="j", files=files,
                          count_columns=[])
    gone = uploads.submit(deps, "dave", grant_id="g-com", title="gone", justification="j", files=files,
                          count_columns=[])
    workflow.withdraw(deps, kept, "dave", "changed my mind")  # the requester's own withdrawal is billed
    # the authority withdraws the pending request (what `grants revoke` does), the grant stays active here
    assert workflow.withdraw_pending_for_grant(deps, "g-com", "admin") == 1
    st = next(s for s in usage_report(usage_sources(svc), period, PRICES) if s["grant"] == "g-com")
    assert st["exports"] == 2  # metered
    line = next(x for x in st["lines"] if x["item"] == "exports")
    assert (line["quantity"], line["amount"]) == ("1", "5.00")  # billed: only the requester's own
    assert gone


def test_suspension_now_stops_billing_from_today(svc: Services) -> None:
    now = dt.datetime.now(dt.UTC)
    period = now.strftime("%Y-%m")
    svc.policies.set_status("g-com", "suspended", "admin", "check")
    report = usage_report(usage_sources(svc), period, PRICES)
    st = {s["grant"]: s for s in report}["g-com"]  # listed even if nothing is billed
    assert st["billable_days"] == now.day - 1 and st["not_billed_days"] == {"suspended": st["days"] - now.day + 1}
    rows = list(csv.DictReader(io.StringIO(format_csv([st]))))
    assert [r["item"] for r in rows][-2:] == ["days_not_billed", "total"]
    assert rows[-1]["currency"] == "CNY"


def test_price_ceiling_and_free_products(client, services: Services, alice) -> None:  # noqa: ANN001
    body = {"grant": DEMO, "kind": "product", "name": "Atlas", "description": "maps"}
    resp = client.post("/v1/offerings", headers=alice, json={**body, "price": "50000.01"})
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "over_price_ceiling"
    assert client.post("/v1/offerings", headers=alice, json={**body, "price": "50000.00"}).status_code == 201
    resp = client.post("/v1/offerings", headers=alice, json={**body, "kind": "service", "price": "20000.01"})
    assert resp.status_code == 400
    assert offerings.parse_price("12.5") == Decimal("12.5")


def test_schedule_is_published(client) -> None:  # noqa: ANN001
    data = client.get("/public/prices.json").get_json()
    assert data["currency"] == "CNY" and data["ceilings"] == {"product": "50000.00", "service": "20000.00"}
    assert "public_health" in data["public_welfare_conditions"]["purpose_categories"]
    html = client.get("/public/prices").get_data(as_text=True)
    assert "50000.00" in html and "CNY" in html and "public_health" in html
