"""Joins through a real gateway over its own small catalog.

``visits`` (private: patients, up to 3 visits each, a region code) joins ``regions`` (public:
code -> name, population) on its key, and ``other`` (private, the same patients) on the unit.
The attacks: a lookup whose key repeats (each visit would count twice) is refused before any
charge; a patient with many visits contributes no more after a join than the bound (3 rows),
even when both sides hold 3 of their rows (9 pairs); other joins stay refused.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sandbox.dp.planner import plan_dp
from sandbox.mock import MockClient
from sandbox.policy.loader import load_policies
from sandbox.services import Services, Settings
from sandbox.sql._join import joined_dataset
from sandbox.sql.analyze import analyze
from sandbox.state.grants_store import apply_policies

GRANT = "g-join"
REGIONS = {"n": ("North", 1000), "s": ("South", 2000), "e": ("East", 500)}


def _world(tmp_path: Path, duplicate_key: bool = False):  # noqa: ANN202
    data, policies = tmp_path / "data", tmp_path / "policies"
    (policies / "datasets").mkdir(parents=True)
    (policies / "grants").mkdir()
    data.mkdir()
    pids, regions, costs = [], [], []
    for p in range(600):
        for visit in range(1 + p % 3):
            pids.append(f"p{p}")
            regions.append("nse"[p % 3] if p % 7 else "w")  # 'w' has no lookup row
            costs.append(10 + visit)
    for _ in range(40):  # one patient, forty visits in the north
        pids.append("frequent")
        regions.append("n")
        costs.append(50)
    pq.write_table(pa.table({"pid": pids, "region": regions, "cost": costs}), data / "visits.parquet")
    codes = list(REGIONS) + (["n"] if duplicate_key else [])
    pq.write_table(pa.table({"code": codes, "name": [REGIONS[c][0] for c in codes],
                             "pop": [REGIONS[c][1] for c in codes]}), data / "regions.parquet")
    (policies / "datasets" / "visits.yaml").write_text(textwrap.dedent("""
        id: visits
        title: Clinic visits
        source: visits.parquet
        classification: L2
        privacy_unit: pid
        max_rows_per_unit: 3
        columns:
          pid: {type: id}
          region: {type: category, values: [n, s, e, w]}
          cost: {type: int, bounds: [0, 100]}
    """))
    (policies / "datasets" / "regions.yaml").write_text(textwrap.dedent("""
        id: regions
        title: Region names and populations
        source: regions.parquet
        classification: L1
        privacy_unit: row
        max_rows_per_unit: 1
        public: true
        key: code
        columns:
          code: {type: category, values: [n, s, e, w]}
          name: {type: category, values: [North, South, East, West]}
          pop: {type: int, bounds: [0, 10000]}
    """))
    (policies / "datasets" / "other.yaml").write_text(textwrap.dedent("""
        id: other
        title: Other private data on the same patients
        source: visits.parquet
        classification: L2
        privacy_unit: pid
        max_rows_per_unit: 3
        columns:
          pid: {type: id}
          region: {type: category, values: [n, s, e, w]}
    """))
    (policies / "grants" / "g-join.yaml").write_text(textwrap.dedent(f"""
        id: {GRANT}
        operator: Test Ltd.
        members: [alice]
        mode: scenario
        purpose: testing joins
        datasets: {{visits: {{columns: [region, cost]}}, regions: {{columns: [code, name, pop]}},
                    other: {{columns: [region]}}}}
        valid_from: 2020-01-01
        valid_until: 2099-12-31
        budget: {{epsilon: 10.0}}
        max_epsilon_per_query: 1.0
    """))
    services = Services(Settings(state_dir=tmp_path / "state", data_root=data))
    apply_policies(services.policies, load_policies(policies), "test")
    services.engine.ensure(services.policies.datasets())
    from gateway.app import create_app

    app = create_app(services=services)
    app.config["TESTING"] = True
    return app.test_client(), {"Authorization": f"Bearer {services.tokens.create('alice')}"}, services


def _ask(client, headers, sql: str, epsilon: float = 0.5):  # noqa: ANN001, ANN202
    return client.post("/v1/query", headers=headers, json={"sql": sql, "epsilon": epsilon, "grant": GRANT})


def _exact(services, sql: str) -> dict:  # noqa: ANN001
    catalog = services.policies.datasets()
    granted = {ds: set(g.columns) for ds, g in services.policies.grant(GRANT).datasets.items()}
    plan = analyze(sql, catalog, granted)
    dataset = catalog[plan.dataset]
    if plan.join is not None:
        dataset = joined_dataset(dataset, catalog[plan.join.lookup])
    return {k: {p.label: v for p, v in vals.items()}
            for k, vals in services.engine.exact(plan_dp(plan, dataset, 1.0)).items()}


def test_join_answers_by_lookup_name(tmp_path: Path) -> None:
    client, alice, services = _world(tmp_path)
    sql = ("SELECT r.name AS region, COUNT(*) AS n, SUM(r.pop) AS pop FROM visits AS v JOIN regions AS r "
           "ON v.region = r.code WHERE r.pop >= 1000 GROUP BY r.name ORDER BY region")
    resp = _ask(client, alice, sql)
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert [row[0] for row in body["rows"]] == ["East", "North", "South", "West"]  # the declared domain
    exact = _exact(services, sql)
    ci = body["accuracy"]["ci_halfwidth"]["n"]
    for name, n, _pop in body["rows"]:
        assert abs(n - exact.get((name,), {}).get("count(*)", 0)) <= 2 * ci
    assert exact.get(("East",)) is None and exact.get(("West",)) is None  # filtered out / no lookup row


def test_the_join_never_multiplies_a_unit(tmp_path: Path) -> None:
    """Per region, the joined count equals the private count: each visit meets one lookup row,
    and the frequent visitor still counts 3 visits (the bound), not 40."""
    _, _, services = _world(tmp_path)
    joined = _exact(services, "SELECT v.region, COUNT(*) FROM visits AS v JOIN regions AS r "
                              "ON v.region = r.code GROUP BY v.region")
    plain = _exact(services, "SELECT region, COUNT(*) FROM visits GROUP BY region")
    assert {k: v["count(*)"] for k, v in joined.items()} == {
        k: v["count(*)"] for k, v in plain.items() if k != ("w",)}
    people = _exact(services, "SELECT COUNT(DISTINCT pid) AS p, COUNT(*) AS n FROM visits AS v LEFT JOIN regions "
                              "AS r ON v.region = r.code")[()]
    assert people["units(*)"] == 601  # 600 patients and the frequent visitor, once each


def test_a_repeated_lookup_key_is_refused_before_any_charge(tmp_path: Path) -> None:
    client, alice, services = _world(tmp_path, duplicate_key=True)
    before = services.ledger.state(GRANT).to_dict()
    resp = _ask(client, alice, "SELECT COUNT(*) FROM visits AS v JOIN regions AS r ON v.region = r.code")
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "lookup_key_not_unique"
    assert services.ledger.state(GRANT).to_dict() == before


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT COUNT(*) FROM visits AS v JOIN other AS o ON v.region = o.region",  # private, not on the unit
        "SELECT COUNT(*) FROM visits AS v JOIN other AS o ON v.pid = o.region",
        "SELECT COUNT(*) FROM regions AS r JOIN visits AS v ON v.region = r.code",  # lookup first
        "SELECT COUNT(*) FROM visits AS v JOIN regions AS r ON v.region = r.name",  # not the key
        "SELECT COUNT(*) FROM visits AS v JOIN regions AS r ON v.cost > r.pop",
        "SELECT COUNT(*) FROM visits AS v JOIN regions AS r USING (code)",
        "SELECT COUNT(*) FROM visits CROSS JOIN regions",
        "SELECT COUNT(*) FROM visits, regions",
        "SELECT COUNT(*) FROM visits AS v FULL JOIN regions AS r ON v.region = r.code",
        "SELECT COUNT(*) FROM visits AS v JOIN regions AS r ON v.region = r.code "
        "JOIN regions AS q ON v.region = q.code",
        "SELECT COUNT(*) FROM visits AS v JOIN (SELECT * FROM regions) AS r ON v.region = r.code",
        "SELECT COUNT(*) FROM visits AS v JOIN regions AS r ON v.region = r.code AND r.pop > 1",
        "SELECT COUNT(*) FROM visits AS v JOIN regions AS r ON v.pid = r.code",  # the id
    ],
)
def test_other_joins_stay_refused(tmp_path: Path, sql: str) -> None:
    client, alice, services = _world(tmp_path)
    resp = _ask(client, alice, sql)
    assert resp.status_code in (400, 403), resp.get_json()
    assert resp.get_json()["error"]["code"] in ("join_not_allowed", "column_not_granted", "id_column")
    assert services.ledger.state(GRANT).epsilon_spent == 0.0


def test_mock_mode_joins_the_same_way(tmp_path: Path) -> None:
    client, alice, _ = _world(tmp_path)
    entries = client.get("/v1/catalog", headers=alice).get_json()["datasets"]
    assert next(e for e in entries if e["dataset"] == "regions")["key"] == "code"
    mock = MockClient.from_catalog(entries, GRANT, rows=300)
    df = mock.query("SELECT r.name AS region, COUNT(*) AS n FROM visits AS v LEFT JOIN regions AS r "
                    "ON v.region = r.code GROUP BY r.name", epsilon=0.5)
    assert list(df["region"]) == ["North", "South", "East", "West"] and df.attrs["mock"] is True
    from sandbox.client import GatewayError

    with pytest.raises(GatewayError) as info:
        mock.query("SELECT COUNT(*) FROM visits AS v JOIN other AS o ON v.region = o.region", epsilon=0.5)
    assert info.value.code == "join_not_allowed"


def test_unit_join_bounds_each_unit_after_the_join(tmp_path: Path) -> None:
    """visits and other hold the same rows: a patient with a rows on each side has a * a pairs,
    bounded to 3 after the join (the larger of the two bounds). 200 patients have 1 row (1 pair),
    200 have 2 (4 pairs -> 3), 200 have 3 (9 -> 3), and the frequent visitor 3 (9 -> 3)."""
    client, alice, services = _world(tmp_path)
    sql = ("SELECT COUNT(*) AS n, COUNT(DISTINCT pid) AS people FROM visits AS v JOIN other AS o "
           "ON v.pid = o.pid")
    exact = _exact(services, sql)[()]
    assert exact == {"count(*)": 200 * 1 + 200 * 3 + 200 * 3 + 3, "units(*)": 601}
    resp = _ask(client, alice, "SELECT o.region AS r, COUNT(*) AS n FROM visits AS v LEFT JOIN other AS o "
                               "ON v.pid = o.pid GROUP BY o.region")
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert [row[0] for row in body["rows"]] == ["n", "s", "e", "w"]
    assert body["mechanism"]["scales"]["count(*)"] == pytest.approx(3 / 0.5)  # sensitivity: the bound, 3


def test_unit_join_in_mock_mode(tmp_path: Path) -> None:
    client, alice, _ = _world(tmp_path)
    entries = client.get("/v1/catalog", headers=alice).get_json()["datasets"]
    mock = MockClient.from_catalog(entries, GRANT, rows=300)
    df = mock.query("SELECT o.region, COUNT(*) AS n FROM visits AS v JOIN other AS o ON v.pid = o.pid "
                    "GROUP BY o.region", epsilon=0.5)
    assert list(df.columns) == ["other__region", "n"] and df["n"].sum() > 0


def test_a_unit_join_charges_the_caps_of_both_private_datasets(tmp_path: Path) -> None:
    """A join on the unit reads both private datasets: each one's caps across grants are charged,
    so the join is no way around a cap on the second dataset (the public lookup is never charged)."""
    client, alice, services = _world(tmp_path)
    datasets = services.policies.datasets()
    services.policies.apply_dataset(datasets["other"].model_copy(update={"max_epsilon_per_operator": 0.8}), "admin")
    unit_join = "SELECT COUNT(*) AS n FROM visits AS v JOIN other AS o ON v.pid = o.pid"
    assert _ask(client, alice, unit_join, 0.5).status_code == 200
    caps = {(c.cap, c.dataset): c.epsilon_spent for ds in ("visits", "other", "regions")
            for c in services.ledger.cap_states(services.policies.datasets()[ds], "Test Ltd.")}
    assert caps[("operator", "visits")] == caps[("operator", "other")] == 0.5
    assert caps[("dataset", "other")] == 0.5 and caps[("operator", "regions")] == 0.0
    before = services.ledger.state(GRANT).to_dict()
    refused = _ask(client, alice, unit_join.replace("AS n", "AS n2"), 0.5)  # a new query, not a replay
    assert refused.status_code == 409, refused.get_json()
    error = refused.get_json()["error"]
    assert error["code"] == "budget_exhausted" and error["detail"]["cap"] == "operator"
    assert error["detail"]["dataset"] == "other"
    assert services.ledger.state(GRANT).to_dict() == before  # nothing charged by the refusal
    lookup = "SELECT COUNT(*) AS n FROM visits AS v JOIN regions AS r ON v.region = r.code"
    assert _ask(client, alice, lookup, 0.5).status_code == 200  # visits has no cap; regions is public
    assert services.ledger.reconcile() == []
    from sandbox.state.replay import reconcile  # both datasets' cap tallies are rebuilt from the log too

    assert reconcile(services.db, services.audit) == [] and services.audit.verify().ok


def test_a_join_is_planned_from_the_joined_catalog_entry(tmp_path: Path) -> None:
    client, alice, services = _world(tmp_path)
    sql = ("SELECT r.name AS region, COUNT(*) AS n, SUM(r.pop) AS pop FROM visits AS v JOIN regions AS r "
           "ON v.region = r.code GROUP BY r.name")
    plan = client.post("/v1/plan", headers=alice, json={"sql": sql, "epsilon": 0.5, "grant": GRANT})
    assert plan.status_code == 200, plan.get_json()
    planned = plan.get_json()
    released = _ask(client, alice, sql).get_json()
    assert planned["accuracy"]["ci_halfwidth"] == released["accuracy"]["ci_halfwidth"]
    assert planned["mechanism"]["scales"] == released["mechanism"]["scales"]
