"""The delta partition selection spends on pure grants counts against the dataset's ``budget.delta``
(all grants together), per query, in the same transaction as the grant's own delta: before, it went
only to each grant's delta budget, so many pure grants took a dataset past its delta cap."""

from __future__ import annotations

import textwrap
from pathlib import Path

from test_unknown_categories import GRANT, visits_client  # noqa: F401 - the fixture

from sandbox.policy.loader import load_policies
from sandbox.state.grants_store import apply_policies

SQL = "SELECT city, COUNT(*) AS n FROM visits GROUP BY city"


def test_selection_delta_counts_against_the_dataset_delta_cap(visits_client, tmp_path: Path) -> None:  # noqa: ANN001, F811
    client, alice, services = visits_client
    policies = tmp_path / "policies"
    entry = (policies / "datasets" / "visits.yaml").read_text()
    # each query spends 1/100 of its grant's delta 1e-6: 1e-8; the dataset allows 2.5e-8 in all
    (policies / "datasets" / "visits.yaml").write_text(entry + "budget: {epsilon: 100.0, delta: 2.5e-8}\n")
    grant = (policies / "grants" / "g-visits.yaml").read_text()
    (policies / "grants" / "g-other.yaml").write_text(textwrap.dedent(
        grant.replace(f"id: {GRANT}", "id: g-other").replace("members: [alice]", "members: [bob]")))
    apply_policies(services.policies, load_policies(policies), "test")
    bob = {"Authorization": f"Bearer {services.tokens.create('bob')}"}

    def ask(headers: dict, grant: str, epsilon: float):  # noqa: ANN202
        return client.post("/v1/query", headers=headers, json={"sql": SQL, "epsilon": epsilon, "grant": grant})

    assert ask(alice, GRANT, 0.5).status_code == 200
    assert ask(bob, "g-other", 0.5).status_code == 200
    refused = ask(alice, GRANT, 0.6)  # a third selection: 3e-8 over the dataset's 2.5e-8
    assert refused.status_code == 409, refused.get_json()
    error = refused.get_json()["error"]
    assert error["code"] == "budget_exhausted" and error["detail"]["cap"] == "dataset"
    caps = client.get("/v1/budget", headers=alice).get_json()
    text = str(caps)
    assert "delta_spent" in text and "2e-08" in text, caps
    # nothing was charged by the refused query: the grant's own delta still shows one selection
    assert services.ledger.delta_state(GRANT)[1] == 1e-8


def test_selections_charged_before_the_tally_are_backfilled(visits_client) -> None:  # noqa: ANN001, F811
    client, alice, services = visits_client
    reply = client.post("/v1/query", headers=alice, json={"sql": SQL, "epsilon": 0.5, "grant": GRANT})
    assert reply.status_code == 200
    import sqlite3
    from contextlib import closing

    from sandbox.state import caps

    # a state written before the per-query tally existed (by the older code, outside this unit of work)
    with closing(sqlite3.connect(services.ledger.db.path, isolation_level=None)) as conn:
        conn.execute("DELETE FROM dataset_selection_delta")
    detail = caps.backfill(services.ledger.db, services.audit)
    assert detail is not None and detail["selection_deltas"] == 1
    rows = services.ledger.db.read("SELECT dataset, delta FROM dataset_selection_delta")
    assert [(r["dataset"], r["delta"]) for r in rows] == [("visits", 1e-8)]
    assert caps.backfill(services.ledger.db, services.audit) is None  # idempotent
