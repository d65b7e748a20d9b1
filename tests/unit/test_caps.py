"""Caps across grants (operator, dataset) and zCDP budget arithmetic, on a real SQLite ledger."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
import yaml

from sandbox.dp.accounting import epsilon_to_rho, rho_to_epsilon
from sandbox.errors import BadRequest, Conflict
from sandbox.policy.models import Dataset
from sandbox.policy.rules import check_caps_not_raised
from sandbox.state.audit import AuditEvent, AuditLog
from sandbox.state.db import StateDB
from sandbox.state.ledger import Ledger

POLICIES = Path(__file__).resolve().parents[2] / "policies"
ACME, OTHER = "Acme Ltd.", "Other Ltd."


def _dataset(**over) -> Dataset:  # noqa: ANN003
    data = yaml.safe_load((POLICIES / "datasets" / "nhanes_2017.yaml").read_text())
    for cap in ("budget", "max_epsilon_per_operator", "operator_caps"):  # no caps unless a test declares them
        data.pop(cap, None)
    data.update(over)
    return Dataset.model_validate(data)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    db = StateDB(tmp_path)
    led = Ledger(db, AuditLog(db), wait_for_twin_s=0.5)
    with db.work() as work:
        for gid in ("a1", "a2", "a3", "o1"):
            Ledger.ensure_budget(work.conn, gid, 10.0, 0.0)
        Ledger.ensure_budget(work.conn, "z1", 10.0, 1e-6, "zcdp")
        work.record(AuditEvent("test", "test.budgets", None, {}))
    return led


def _charge(ledger: Ledger, gid: str, qid: str, ds: Dataset, operator: str, eps: float | None = None,
            rho: float | None = None):  # noqa: ANN202
    return ledger.charge(grant_id=gid, user="u", query_id=qid, epsilon=eps, rho=rho, max_epsilon_per_query=10.0,
                         cache_key=qid, audit_detail={}, dataset=ds, operator=operator)


def test_operator_cap_holds_across_its_grants(ledger: Ledger) -> None:
    """The issue's case: three grants of one operator (10 + 1 + 1) on the same data."""
    ds = _dataset(operator_caps={ACME: 2.5})
    _charge(ledger, "a1", "q1", ds, ACME, 1.0)
    _charge(ledger, "a2", "q2", ds, ACME, 1.0)
    with pytest.raises(Conflict) as info:
        _charge(ledger, "a3", "q3", ds, ACME, 1.0)
    assert info.value.code == "budget_exhausted" and info.value.detail["cap"] == "operator"
    assert ACME in info.value.message
    _charge(ledger, "a3", "q3b", ds, ACME, 0.5)  # exactly what is left
    assert [c.epsilon_remaining for c in ledger.cap_states(ds, ACME)][0] == 0.0
    _charge(ledger, "o1", "q4", ds, OTHER, 1.0)  # another operator is not held by Acme's cap
    assert ledger.state("a3").epsilon_spent == 0.5  # the refused charge changed nothing


def test_default_operator_cap_and_dataset_cap(ledger: Ledger) -> None:
    ds = _dataset(budget={"epsilon": 3.0}, max_epsilon_per_operator=2.0)
    _charge(ledger, "a1", "q1", ds, ACME, 2.0)
    with pytest.raises(Conflict) as info:
        _charge(ledger, "a2", "q2", ds, ACME, 0.1)
    assert info.value.detail["cap"] == "operator"
    _charge(ledger, "o1", "q3", ds, OTHER, 1.0)
    with pytest.raises(Conflict) as info:
        _charge(ledger, "o1", "q4", ds, OTHER, 0.5)
    assert info.value.detail["cap"] == "dataset"  # Other has 1.0 left of its own, the world has 0
    states = {c.cap: c for c in ledger.cap_states(ds, OTHER)}
    assert states["dataset"].epsilon_spent == 3.0 and states["dataset"].epsilon_remaining == 0.0
    assert ledger.reconcile() == []


def test_grant_cap_is_named_first(ledger: Ledger) -> None:
    ds = _dataset(budget={"epsilon": 100.0})
    _charge(ledger, "a1", "q1", ds, ACME, 10.0)
    with pytest.raises(Conflict) as info:
        _charge(ledger, "a1", "q2", ds, ACME, 0.001)
    assert info.value.detail["cap"] == "grant"


def test_a_cap_declared_later_counts_what_was_spent(ledger: Ledger) -> None:
    _charge(ledger, "a1", "q1", _dataset(), ACME, 4.0)
    with pytest.raises(Conflict) as info:
        _charge(ledger, "a2", "q2", _dataset(budget={"epsilon": 4.5}), ACME, 1.0)
    assert info.value.detail["cap"] == "dataset"


def test_caps_are_never_raised_or_removed() -> None:
    old = _dataset(budget={"epsilon": 5.0}, max_epsilon_per_operator=2.0, operator_caps={ACME: 1.0})
    check_caps_not_raised(old, _dataset(budget={"epsilon": 4.0}, max_epsilon_per_operator=2.0,
                                        operator_caps={ACME: 0.5}))
    for new in (_dataset(budget={"epsilon": 6.0}, max_epsilon_per_operator=2.0, operator_caps={ACME: 1.0}),
                _dataset(max_epsilon_per_operator=2.0, operator_caps={ACME: 1.0}),
                _dataset(budget={"epsilon": 5.0}, max_epsilon_per_operator=2.0),  # Acme back to 2.0
                _dataset(budget={"epsilon": 5.0}, operator_caps={ACME: 1.0})):
        with pytest.raises(Conflict, match="only ever lowered"):
            check_caps_not_raised(old, new)


# -- zCDP ----------------------------------------------------------------------------------------
def test_rho_total_is_opendps_conversion_of_the_grant() -> None:
    rho = epsilon_to_rho(10.0, 1e-6)
    assert rho_to_epsilon(rho, 1e-6) == pytest.approx(10.0, abs=1e-8)
    assert rho_to_epsilon(rho, 1e-6) <= 10.0
    assert rho_to_epsilon(rho * 1.001, 1e-6) > 10.0  # the largest such rho
    # the classic bound rho + 2 sqrt(rho log(1/delta)) is looser than OpenDP's conversion
    import math
    assert rho_to_epsilon(rho, 1e-6) <= rho + 2 * math.sqrt(rho * math.log(1e6))


def test_zcdp_grant_spends_rho_and_shows_epsilon(ledger: Ledger) -> None:
    ds = _dataset()
    state = ledger.state("z1")
    assert state.accounting == "zcdp" and state.rho_total == pytest.approx(epsilon_to_rho(10.0, 1e-6), abs=1e-8)
    for i in range(10):
        _charge(ledger, "z1", f"z{i}", ds, ACME, rho=0.1)
    state = ledger.state("z1")
    assert state.rho_spent == pytest.approx(1.0)
    # the epsilon shown is the conversion of the rho spent, and the charges add up to it exactly
    assert state.epsilon_spent == pytest.approx(rho_to_epsilon(1.0, 1e-6), abs=2e-9)
    assert sum(c.epsilon_nano for c in ledger.charges("z1")) == round(state.epsilon_spent * 1e9)
    assert ledger.reconcile() == []
    with pytest.raises(BadRequest) as info:
        _charge(ledger, "z1", "zx", ds, ACME, eps=0.1)
    assert info.value.code == "wrong_accounting"
    with pytest.raises(BadRequest):
        _charge(ledger, "a1", "ax", ds, ACME, rho=0.1)


def test_zcdp_spends_its_whole_rho_and_no_more(ledger: Ledger) -> None:
    ds = _dataset()
    total = ledger.state("z1").rho_total
    _charge(ledger, "z1", "big", ds, ACME, rho=total - 0.5)
    _charge(ledger, "z1", "rest", ds, ACME, rho=round(ledger.state("z1").rho_remaining, 9))
    with pytest.raises(Conflict) as info:
        _charge(ledger, "z1", "over", ds, ACME, rho=1e-6)
    assert info.value.detail["cap"] == "grant"
    assert ledger.state("z1").epsilon_spent <= 10.0


def test_zcdp_grant_counts_against_caps_with_its_epsilon(ledger: Ledger) -> None:
    cap = rho_to_epsilon(0.5, 1e-6)
    ds = _dataset(operator_caps={ACME: round(cap + 1e-6, 6)})
    for i in range(5):
        _charge(ledger, "z1", f"z{i}", ds, ACME, rho=0.1)
    spent = ledger.cap_states(ds, ACME)[0].epsilon_spent
    assert spent == pytest.approx(cap, abs=1e-8)  # telescoped: the epsilon of the rho spent on it
    with pytest.raises(Conflict) as info:
        _charge(ledger, "z1", "z-over", ds, ACME, rho=0.01)
    assert info.value.detail["cap"] == "operator"


def test_accounting_is_fixed_once_applied(ledger: Ledger) -> None:
    with pytest.raises(Conflict) as info, ledger.db.work() as work:
        Ledger.ensure_budget(work.conn, "a1", 10.0, 1e-6, "zcdp")
    assert info.value.code == "budget_fixed"
    with pytest.raises(Conflict), ledger.db.work() as work:
        Ledger.ensure_budget(work.conn, "z1", 10.0, 1e-6, "pure")


def test_dataset_budgets_for_the_public_directory(ledger: Ledger) -> None:
    capped, open_ = _dataset(budget={"epsilon": 5.0}), _dataset(id="other_set")
    _charge(ledger, "a1", "q1", capped, ACME, 1.5)
    _charge(ledger, "o1", "q2", capped, OTHER, 0.5)
    got = ledger.dataset_budgets({"nhanes_2017": capped, "other_set": open_})
    assert got == [
        {"cap": "dataset", "dataset": "nhanes_2017", "epsilon_total": 5.0, "epsilon_spent": 2.0,
         "epsilon_remaining": 3.0, "delta_total": 1e-5, "delta_spent": 0.0},
        {"cap": "dataset", "dataset": "other_set", "epsilon_total": None, "epsilon_spent": 0.0,
         "epsilon_remaining": None},
    ]


def test_zcdp_budget_lowered_by_delta_never_below_what_is_spent(ledger: Ledger) -> None:
    _charge(ledger, "z1", "big", _dataset(), ACME, rho=1.2)
    with pytest.raises(Conflict) as info, ledger.db.work() as work:
        Ledger.ensure_budget(work.conn, "z1", 10.0, 1e-12, "zcdp")  # rho total would fall under 1.2
    assert info.value.code == "budget_fixed"
    with ledger.db.work() as work:
        Ledger.ensure_budget(work.conn, "z1", 10.0, 1e-7, "zcdp")  # still above 1.2: allowed, lowered
        work.record(AuditEvent("test", "test.budget_lowered", "z1", {}))
    assert 1.2 < ledger.state("z1").rho_total < epsilon_to_rho(10.0, 1e-6)


ACME_VARIANTS = ["Acme Health Analytics Ltd.", "Acme Health Analytics Ltd", "acme health analytics ltd.",
                 "Acme Health Analytics Ltd. ", "Acme  Health Analytics Ltd.", "Acme Health Analytics Ltd.\u200b",
                 "ＡＣＭＥ Health Analytics Ltd."]


def test_operator_key_is_canonical() -> None:
    from sandbox.policy.models import operator_key

    assert {operator_key(v) for v in ACME_VARIANTS} == {"acme health analytics ltd"}
    assert operator_key("Acme Health Analytics Ltd.") != operator_key("Acme Health Ltd.")


def test_operator_cap_holds_across_spelling_variants(ledger: Ledger) -> None:
    """The attack: the same institution spelled another way got a fresh cap."""
    ds = _dataset(operator_caps={"ACME HEALTH ANALYTICS LTD": 2.5})  # a cap key matches by canonical key too
    assert ds.operator_cap("Acme Health Analytics Ltd.") == 2.5
    _charge(ledger, "a1", "q1", ds, ACME_VARIANTS[1], 1.0)
    _charge(ledger, "a2", "q2", ds, ACME_VARIANTS[5], 1.0)
    with pytest.raises(Conflict) as info:
        _charge(ledger, "a3", "q3", ds, ACME_VARIANTS[4], 1.0)
    assert info.value.detail["cap"] == "operator"
    states = ledger.cap_states(ds)
    assert [s.epsilon_spent for s in states if s.cap == "operator"] == [2.0]


def test_operator_caps_with_two_spellings_of_one_operator_are_refused() -> None:
    with pytest.raises(ValueError, match="same operator"):
        _dataset(operator_caps={"Acme Ltd.": 1.0, "acme ltd": 5.0})


def _store(tmp_path: Path):  # noqa: ANN202
    from sandbox.policy.loader import load_policies
    from sandbox.state.grants_store import PolicyStore, apply_policies

    db = StateDB(tmp_path)
    store = PolicyStore(db, AuditLog(db))
    apply_policies(store, load_policies(POLICIES), "admin")
    return store, store.grant("g-2026-001")


def test_operator_of_a_grant_cannot_be_renamed(tmp_path: Path) -> None:
    from sandbox.errors import SandboxError

    store, base = _store(tmp_path)
    with pytest.raises(SandboxError) as info:
        store.apply_grant(base.model_copy(update={"operator": "Acme Health Analytics Limited"}), "admin")
    assert info.value.code == "operator_fixed" and info.value.status == 409
    assert store.grant("g-2026-001").operator == base.operator


def test_a_second_spelling_of_an_operator_is_refused(tmp_path: Path) -> None:
    from sandbox.errors import SandboxError

    store, base = _store(tmp_path)
    for i, variant in enumerate(ACME_VARIANTS[1:]):
        with pytest.raises(SandboxError) as info:
            store.apply_grant(base.model_copy(update={"id": f"g-v{i}", "operator": variant}), "admin")
        assert info.value.code == "operator_spelling" and base.operator in info.value.message
    assert store.apply_grant(base.model_copy(update={"id": "g-same"}), "admin").outcome == "created"


def _old_code_charges(store, n: int, dataset: str = "nhanes_2017") -> None:  # noqa: ANN001
    """Charges written the way the ledger did before caps existed: budgets, charges, the audit entry."""
    import datetime as dt

    from sandbox.state.audit import AuditEvent

    with store.db.write() as conn:
        for i in range(n):
            qid = f"q-old-{i}"
            conn.execute("UPDATE budgets SET epsilon_spent_nano = epsilon_spent_nano + ? WHERE grant_id = ?",
                         (1_000_000_000, "g-2026-001"))
            conn.execute("INSERT INTO charges (query_id, grant_id, user, epsilon_nano, ts) VALUES (?, ?, ?, ?, ?)",
                         (qid, "g-2026-001", "alice", 1_000_000_000, dt.datetime.now(dt.UTC).isoformat()))
            store.audit.append(conn, AuditEvent("alice", "query.charged", "g-2026-001",
                                                {"sql": "x", "dataset": dataset, "query_id": qid, "epsilon": 1.0}))
    store.audit.write_head()


def test_upgrade_backfills_cap_tallies_from_existing_charges(tmp_path: Path) -> None:
    """An old state directory: its charges count against the caps from the first open, once."""
    store, grant = _store(tmp_path)
    _old_code_charges(store, 9)
    ledger = Ledger(store.db, store.audit)  # the state opened by the new code
    ds = store.datasets()["nhanes_2017"]
    states = {s.cap: s for s in ledger.cap_states(ds, grant.operator)}
    assert states["operator"].epsilon_spent == 9.0 and states["dataset"].epsilon_spent == 9.0
    assert ledger.reconcile() == []
    events = [e for e in store.audit.entries() if e["action"] == "caps.backfilled"]
    assert len(events) == 1 and events[0]["detail"]["charges"] == 9
    Ledger(store.db, store.audit)  # idempotent: a second open changes nothing
    assert [e["action"] for e in store.audit.entries()].count("caps.backfilled") == 1
    assert {s.cap: s.epsilon_spent for s in ledger.cap_states(ds, grant.operator)}["operator"] == 9.0
    assert store.audit.verify().ok


def test_reconcile_notices_charges_missing_from_the_cap_tallies(tmp_path: Path) -> None:
    store, grant = _store(tmp_path)
    ledger = Ledger(store.db, store.audit)
    ds = store.datasets()["nhanes_2017"]
    ledger.charge(grant_id=grant.id, user="alice", query_id="q1", epsilon=1.0, max_epsilon_per_query=1.0,
                  cache_key="q1", audit_detail={"dataset": ds.id}, dataset=ds, operator=grant.operator)
    assert ledger.reconcile() == []
    with closing(sqlite3.connect(store.db.path, isolation_level=None)) as raw:  # the tallies lost (by hand)
        for table in ("cap_spent", "charge_scopes", "grant_dataset_spent"):
            raw.execute(f"DELETE FROM {table}")
    assert any("q1" in p or "cap" in p for p in ledger.reconcile())
    reopened = Ledger(store.db, store.audit)  # re-opening backfills them
    assert reopened.reconcile() == []
    assert {s.cap: s.epsilon_spent for s in reopened.cap_states(ds, grant.operator)}["operator"] == 1.0


def test_ledger_charge_needs_its_scope(ledger: Ledger) -> None:
    with pytest.raises(TypeError):
        ledger.charge(grant_id="a1", user="u", query_id="q", epsilon=1.0, max_epsilon_per_query=1.0,
                      cache_key="q", audit_detail={})  # type: ignore[call-arg]


def test_zcdp_per_query_cap_is_an_epsilon_at_the_grants_delta(ledger: Ledger) -> None:
    """max_epsilon_per_query is an epsilon: a zCDP query's rho is converted at the grant's delta,
    never compared with max**2/2 (rho 0.5 is epsilon 5.2 at delta 1e-6, far over a cap of 1)."""
    ds = _dataset()
    with pytest.raises(BadRequest) as info:
        ledger.charge(grant_id="z1", user="u", query_id="q1", rho=0.5, max_epsilon_per_query=1.0, cache_key="q1",
                      audit_detail={}, dataset=ds, operator=ACME)
    assert info.value.code == "epsilon_over_cap" and "epsilon" in info.value.message
    assert ledger.state("z1").rho_spent == 0
    largest = epsilon_to_rho(1.0, 1e-6)
    assert rho_to_epsilon(largest, 1e-6) <= 1.0
    ledger.charge(grant_id="z1", user="u", query_id="q2", rho=int(largest * 1e6) / 1e6, max_epsilon_per_query=1.0,
                  cache_key="q2", audit_detail={}, dataset=ds, operator=ACME)
    assert ledger.state("z1").epsilon_spent <= 1.0


def test_zcdp_deltas_add_up_under_the_dataset_delta_cap(ledger: Ledger) -> None:
    """Each zCDP grant that spends on a dataset adds its delta once; the dataset's delta cap holds."""
    with ledger.db.work() as work:
        for gid in ("z2", "z3"):
            Ledger.ensure_budget(work.conn, gid, 10.0, 1e-6, "zcdp")
        work.record(AuditEvent("test", "test.budgets", None, {}))
    ds = _dataset(budget={"epsilon": 100.0, "delta": 2.5e-6})
    assert _dataset(budget={"epsilon": 100.0}).budget.delta == 1e-5  # the default: documented
    _charge(ledger, "z1", "q1", ds, ACME, rho=0.01)
    _charge(ledger, "z1", "q2", ds, ACME, rho=0.01)  # the same grant again: its delta counts once
    _charge(ledger, "z2", "q3", ds, OTHER, rho=0.01)
    with pytest.raises(Conflict) as info:
        _charge(ledger, "z3", "q4", ds, "Third Ltd.", rho=0.01)  # 3e-6 > 2.5e-6
    assert info.value.detail["cap"] == "dataset" and "delta" in info.value.message
    assert info.value.detail["delta_total"] == 2.5e-6
    assert ledger.state("z3").rho_spent == 0
    _charge(ledger, "a1", "q5", ds, ACME, eps=1.0)  # pure grants have no delta
    dataset_row = ledger.cap_states(ds)[-1].to_dict()
    assert dataset_row["delta_total"] == 2.5e-6 and dataset_row["delta_spent"] == pytest.approx(2e-6)


def test_the_delta_cap_is_never_raised() -> None:
    old = _dataset(budget={"epsilon": 10.0, "delta": 1e-6})
    with pytest.raises(Conflict):
        check_caps_not_raised(old, _dataset(budget={"epsilon": 10.0, "delta": 2e-6}))
    check_caps_not_raised(old, _dataset(budget={"epsilon": 10.0, "delta": 5e-7}))


def test_upgrade_backfills_zcdp_deltas(ledger: Ledger) -> None:
    ds = _dataset(budget={"epsilon": 100.0, "delta": 1e-6})
    _charge(ledger, "z1", "q1", ds, ACME, rho=0.01)
    with closing(sqlite3.connect(ledger.db.path, isolation_level=None)) as raw:  # a state from before the tally
        raw.execute("DELETE FROM dataset_delta_spent")
    reopened = Ledger(ledger.db, ledger.audit)
    assert reopened.cap_states(ds)[-1].delta_spent == 1e-6
    with ledger.db.work() as work:
        Ledger.ensure_budget(work.conn, "z2", 10.0, 1e-6, "zcdp")
        work.record(AuditEvent("test", "test.budget", "z2", {}))
    with pytest.raises(Conflict):
        _charge(reopened, "z2", "q2", ds, OTHER, rho=0.01)
