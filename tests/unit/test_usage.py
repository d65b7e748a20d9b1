"""Usage metering and price statements on real SQLite state, against hand-computed statements."""

from __future__ import annotations

import csv
import datetime as dt
import io
import sqlite3
import uuid
from contextlib import closing
from decimal import Decimal
from pathlib import Path

import pytest

from sandbox.errors import BadRequest, PolicyError
from sandbox.policy import load_policies
from sandbox.policy.prices import PriceSchedule, load_prices
from sandbox.services import Services, Settings
from sandbox.state.audit import AuditEvent
from sandbox.state.grants_store import apply_policies
from sandbox.usage import format_csv, parse_period, usage_report
from sandbox.wiring import usage_sources

POLICIES = Path(__file__).resolve().parents[2] / "policies"
DEMO = "g-2026-001"  # public welfare, members alice and bob
COMMERCIAL = "g-test-commercial"
PRICES = PriceSchedule(
    currency="EUR",
    monthly_base=Decimal("100.00"),
    per_query=Decimal("0.40"),
    per_epsilon=Decimal("10.00"),
    per_export=Decimal("5.00"),
    per_notebook_hour=Decimal("2.00"),
    public_welfare="free",
)


def _month_start(moment: dt.datetime) -> dt.datetime:
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@pytest.fixture
def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@pytest.fixture
def period(now: dt.datetime) -> str:
    return now.strftime("%Y-%m")


@pytest.fixture
def svc(tmp_path: Path, now: dt.datetime) -> Services:
    """Demo policies plus a commercial grant whose window covers this month (dave is its member)."""
    services = Services(Settings(state_dir=tmp_path / "state", data_root=tmp_path))
    policies = load_policies(POLICIES)
    apply_policies(services.policies, policies, "test")
    start = _month_start(now).date()
    commercial = policies.grants[DEMO].model_copy(update={
        "id": COMMERCIAL, "operator": "Beta Insights GmbH", "members": ("dave",), "use": "commercial",
        "valid_from": start - dt.timedelta(days=60), "valid_until": start + dt.timedelta(days=400),
    })
    services.policies.apply_grant(commercial, "test")
    # billing starts when a grant was applied: both were applied before this month began
    applied = (_month_start(now) - dt.timedelta(days=45)).isoformat()
    with closing(sqlite3.connect(services.db.path, isolation_level=None)) as raw:  # back-date (test setup)
        raw.execute("UPDATE grants SET applied_at = ?", (applied,))
    return services


def _query(svc: Services, grant_id: str, user: str, epsilon: float, key: str) -> str:
    """One query through the ledger: charged, or replayed free when ``key`` was answered before."""
    charge = svc.ledger.charge(grant_id=grant_id, user=user, query_id=uuid.uuid4().hex, epsilon=epsilon,
                               max_epsilon_per_query=1.0, cache_key=key, audit_detail={"sql": "SELECT 1"},
                               dataset=svc.policies.datasets()["nhanes_2017"],
                               operator=svc.policies.grant(grant_id).operator)
    if charge.cached_response is None:
        svc.ledger.store_answer(key, charge.query_id, user, grant_id, {"answer_sha256": key})
    return charge.query_id


def _usage(svc: Services, now: dt.datetime) -> None:
    """This month: dave 3 charged queries (eps 1.75), 1 replay, 2 exports, 3.5 notebook hours;
    alice 1 query (eps 0.3). Last month: one more charge of dave's that must not count."""
    _query(svc, COMMERCIAL, "dave", 0.5, "k1")
    _query(svc, COMMERCIAL, "dave", 0.25, "k2")
    _query(svc, COMMERCIAL, "dave", 1.0, "k3")
    _query(svc, COMMERCIAL, "dave", 0.5, "k1")  # identical query: cached replay, free
    old = _query(svc, COMMERCIAL, "dave", 0.5, "k-old")
    last_month = (_month_start(now) - dt.timedelta(days=3)).isoformat()
    with closing(sqlite3.connect(svc.db.path, isolation_level=None)) as raw:  # back-date a charge (test setup)
        raw.execute("UPDATE charges SET ts = ? WHERE query_id = ?", (last_month, old))
    _query(svc, DEMO, "alice", 0.3, "k-alice")
    for action in ("export.submitted", "export.submitted", "export.resubmitted", "export.reviewed"):
        svc.audit.record(AuditEvent("dave", action, COMMERCIAL, {"request": "exp-0000000000000000"}))
    start = _month_start(now)
    svc.sessions.started("dave", COMMERCIAL, at=(start - dt.timedelta(hours=1)).isoformat())
    svc.sessions.stopped("dave", at=(start + dt.timedelta(hours=1)).isoformat())  # 1 h in this month
    svc.sessions.started("dave", COMMERCIAL, at=(start + dt.timedelta(hours=2)).isoformat())
    svc.sessions.stopped("dave", at=(start + dt.timedelta(hours=4, minutes=30)).isoformat())  # 2.5 h


def _by_grant(report: list[dict]) -> dict[str, dict]:
    return {st["grant"]: st for st in report}


def _amounts(statement: dict) -> dict[str, str]:
    return {line["item"]: line["amount"] for line in statement["lines"]}


def test_commercial_statement_is_hand_computed(svc: Services, now: dt.datetime, period: str) -> None:
    _usage(svc, now)
    st = _by_grant(usage_report(usage_sources(svc), period, PRICES))[COMMERCIAL]
    assert st["operator"] == "Beta Insights GmbH"
    assert st["use"] == "commercial"
    assert st["currency"] == "EUR"
    assert (st["queries"], st["epsilon"], st["exports"], st["notebook_hours"]) == (3, 1.75, 2, 3.5)
    days = st["days"]
    assert (st["billable_days"], st["not_billed_days"]) == (days, {})
    assert st["lines"] == [
        {"item": "monthly_base", "description": f"Monthly base fee for {days} of {days} days billable",
         "quantity": "1", "unit_price": "100.00", "amount": "100.00"},
        {"item": "queries", "description": "Charged DP queries on billable days (cached replays are free)",
         "quantity": "3", "unit_price": "0.40", "amount": "1.20"},
        {"item": "epsilon", "description": "Privacy budget spent on billable days (epsilon)",
         "quantity": "1.75", "unit_price": "10.00", "amount": "17.50"},
        {"item": "exports", "description": "Export requests submitted on billable days (never those the "
         "authority withdrew)", "quantity": "2", "unit_price": "5.00", "amount": "10.00"},
        {"item": "notebook_hours", "description": "Notebook server hours on billable days",
         "quantity": "3.5", "unit_price": "2.00", "amount": "7.00"},
    ]
    assert st["total"] == "135.70"  # 100 + 1.20 + 17.50 + 10 + 7


def test_public_welfare_grant_is_metered_but_charged_zero(svc: Services, now: dt.datetime, period: str) -> None:
    _usage(svc, now)
    st = _by_grant(usage_report(usage_sources(svc), period, PRICES))[DEMO]
    assert st["use"] == "public_welfare"
    assert (st["queries"], st["epsilon"], st["exports"], st["notebook_hours"]) == (1, 0.3, 0, 0.0)
    amounts = _amounts(st)
    assert amounts == {"monthly_base": "0.00", "queries": "0.00", "epsilon": "0.00", "exports": "0.00",
                       "notebook_hours": "0.00", "days_not_billed": "0.00"}
    assert st["billable_days"] == 0 and st["not_billed_days"] == {"public_welfare": st["days"]}
    assert "free public-welfare use" in st["lines"][-1]["description"]
    assert st["total"] == "0.00"


def test_public_welfare_standard_pricing_charges_it(svc: Services, now: dt.datetime, period: str) -> None:
    _usage(svc, now)
    prices = PRICES.model_copy(update={"public_welfare": "standard"})
    st = _by_grant(usage_report(usage_sources(svc), period, prices))[DEMO]
    assert "public_welfare_waiver" not in _amounts(st)
    assert st["total"] == "103.40"


def test_epsilon_sums_exactly(svc: Services, period: str) -> None:
    for i in range(3):
        _query(svc, COMMERCIAL, "dave", 0.1, f"tenth-{i}")
    st = _by_grant(usage_report(usage_sources(svc), period, PRICES))[COMMERCIAL]
    assert st["epsilon"] == 0.3
    epsilon_line = next(line for line in st["lines"] if line["item"] == "epsilon")
    assert (epsilon_line["quantity"], epsilon_line["amount"]) == ("0.3", "3.00")
    assert st["total"] == "104.20"  # 100 + 3 * 0.40 + 3.00


def test_grants_out_of_force_without_usage_are_left_out(svc: Services) -> None:
    assert usage_report(usage_sources(svc), "2019-07", PRICES) == []


def test_grant_revoked_before_the_period_pays_no_base(svc: Services, now: dt.datetime, period: str) -> None:
    svc.policies.set_status(COMMERCIAL, "revoked", "admin", reason="test")
    # revoked during this period: billed for the days before the revocation only
    report = _by_grant(usage_report(usage_sources(svc), period, PRICES))
    before = now.day - 1
    if before == 0:  # revoked on the first day: nothing billable and no usage, so no statement
        assert COMMERCIAL not in report
        return
    st = report[COMMERCIAL]
    assert st["billable_days"] == before and st["not_billed_days"] == {"revoked": st["days"] - before}
    expected = (Decimal("100.00") * before / st["days"]).quantize(Decimal("0.01"), rounding="ROUND_HALF_UP")
    assert _amounts(st)["monthly_base"] == str(expected)
    next_month = (_month_start(now) + dt.timedelta(days=40)).strftime("%Y-%m")
    assert COMMERCIAL not in _by_grant(usage_report(usage_sources(svc), next_month, PRICES))


@pytest.mark.parametrize("bad", ["2026-13", "2026-00", "2026-1", "26-01", "", "2026-12-01", "december"])
def test_bad_period_is_refused_clearly(svc: Services, bad: str) -> None:
    with pytest.raises(BadRequest) as info:
        usage_report(usage_sources(svc), bad, PRICES)
    assert info.value.code == "bad_period"
    assert "YYYY-MM" in info.value.message


def test_period_is_a_half_open_utc_month() -> None:
    start, end = parse_period("2026-12")
    assert start == dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    assert end == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)


def test_format_csv_has_a_row_per_line_and_a_total(svc: Services, now: dt.datetime, period: str) -> None:
    _usage(svc, now)
    rows = list(csv.DictReader(io.StringIO(format_csv(usage_report(usage_sources(svc), period, PRICES)))))
    commercial = [r for r in rows if r["grant"] == COMMERCIAL]
    assert [r["item"] for r in commercial] == ["monthly_base", "queries", "epsilon", "exports", "notebook_hours",
                                              "total"]
    assert commercial[-1]["amount"] == "135.70"
    assert commercial[2] == {
        "period": period, "grant": COMMERCIAL, "operator": "Beta Insights GmbH", "use": "commercial",
        "item": "epsilon", "description": "Privacy budget spent on billable days (epsilon)", "quantity": "1.75",
        "unit_price": "10.00", "amount": "17.50", "currency": "EUR",
    }
    demo_total = [r for r in rows if r["grant"] == DEMO][-1]
    assert (demo_total["item"], demo_total["amount"]) == ("total", "0.00")


def test_repository_price_schedule_loads_and_is_the_default(
    svc: Services, period: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SANDBOX_POLICIES", raising=False)
    prices = load_prices(POLICIES / "prices.yaml")
    assert prices.public_welfare == "free"
    report = usage_report(usage_sources(svc), period)
    assert {st["currency"] for st in report} == {prices.currency}


def test_invalid_price_schedule_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text("currency: euro\nmonthly_base: 1\nper_query: -1\nper_epsilon: 1\nper_export: 1\n"
                    "per_notebook_hour: 1\n", encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_prices(path)
    assert "currency" in info.value.message and "per_query" in info.value.message
    with pytest.raises(PolicyError):
        load_prices(tmp_path / "missing.yaml")
