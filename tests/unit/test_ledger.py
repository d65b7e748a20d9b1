"""Budget arithmetic: exact sums, caps, refusal without change, no refunds, replays are free."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sandbox.errors import BadRequest, Conflict
from sandbox.policy.models import Dataset
from sandbox.state.audit import AuditEvent, AuditLog
from sandbox.state.db import StateDB
from sandbox.state.ledger import Ledger

# every charge names its dataset and operator (their caps are charged in the same transaction)
DATASET = Dataset.model_validate(
    yaml.safe_load((Path(__file__).resolve().parents[2] / "policies" / "datasets" / "nhanes_2017.yaml").read_text())
)
SCOPE = {"dataset": DATASET, "operator": "Acme Ltd."}


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    db = StateDB(tmp_path)
    led = Ledger(db, AuditLog(db), wait_for_twin_s=0.5)
    with db.work() as work:
        Ledger.ensure_budget(work.conn, "g-1", 1.0, 0.0)
        work.record(AuditEvent("test", "grant.created", "g-1", {}))
    return led


def _charge(ledger: Ledger, qid: str, eps: float, key: str | None = None):  # noqa: ANN202
    return ledger.charge(
        grant_id="g-1", user="alice", query_id=qid, epsilon=eps, max_epsilon_per_query=1.0,
        cache_key=key or qid, audit_detail={"sql": "x"}, **SCOPE,
    )


def test_ten_tenths_spend_exactly_one(ledger: Ledger) -> None:
    for i in range(10):
        _charge(ledger, f"q{i}", 0.1)
        ledger.store_answer(f"q{i}", f"q{i}", "alice", "g-1", {"rows": []})
    state = ledger.state("g-1")
    assert state.epsilon_spent == 1.0
    assert state.epsilon_remaining == 0.0
    with pytest.raises(Conflict) as info:
        _charge(ledger, "q-over", 1e-9)
    assert info.value.code == "budget_exhausted"


def test_refused_charge_changes_nothing(ledger: Ledger) -> None:
    _charge(ledger, "a", 0.7)
    before = ledger.db.read("SELECT COUNT(*) AS n FROM charges")[0]["n"]
    with pytest.raises(Conflict):
        _charge(ledger, "b", 0.4)
    assert ledger.state("g-1").epsilon_spent == 0.7
    assert ledger.db.read("SELECT COUNT(*) AS n FROM charges")[0]["n"] == before


def test_per_query_cap(ledger: Ledger) -> None:
    with pytest.raises(BadRequest) as info:
        ledger.charge(grant_id="g-1", user="a", query_id="x", epsilon=0.6, max_epsilon_per_query=0.5,
                      cache_key="x", audit_detail={}, **SCOPE)
    assert info.value.code == "epsilon_over_cap"


def test_replay_is_free_and_failed_query_is_not_refunded(ledger: Ledger) -> None:
    _charge(ledger, "a", 0.3, key="same")
    ledger.store_answer("same", "a", "alice", "g-1", {"rows": [[1]]})
    replay = _charge(ledger, "b", 0.3, key="same")
    assert replay.cached_response == {"rows": [[1]]}
    assert ledger.state("g-1").epsilon_spent == pytest.approx(0.3)
    _charge(ledger, "c", 0.2, key="fails")
    ledger.forget_pending("fails", "c", "alice", "g-1", "engine error")
    assert ledger.state("g-1").epsilon_spent == pytest.approx(0.5)


def test_budget_never_raised(ledger: Ledger) -> None:
    with pytest.raises(Conflict) as info, ledger.db.work() as work:
        Ledger.ensure_budget(work.conn, "g-1", 2.0, 0.0)
    assert info.value.code == "budget_fixed"
