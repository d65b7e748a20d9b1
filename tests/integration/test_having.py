"""HAVING through the real gateway: a filter on the released noisy rows, never on exact values."""

from __future__ import annotations

from sandbox.dp.planner import plan_dp
from sandbox.sql.analyze import analyze

GRANT = "g-2026-001"


def _post(client, headers, sql: str, epsilon: float) -> dict:  # noqa: ANN001
    resp = client.post("/v1/query", headers=headers, json={"sql": sql, "epsilon": epsilon, "grant": GRANT})
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def _exact_count(services, sql: str) -> int:  # noqa: ANN001
    catalog = services.policies.datasets()
    granted = {ds: set(g.columns) for ds, g in services.policies.grant(GRANT).datasets.items()}
    dp_plan = plan_dp(analyze(sql, catalog, granted), catalog["nhanes_2017"], 1.0)
    (counts,) = services.engine.exact(dp_plan).values()
    return next(iter(counts.values()))


def test_having_filters_the_released_rows(client, alice) -> None:  # noqa: ANN001
    body = _post(client, alice, "SELECT race, COUNT(*) AS n, AVG(age) AS a FROM nhanes_2017 GROUP BY race "
                 "HAVING n > 1000 AND a < 80 ORDER BY n DESC", 0.5)
    assert body["columns"] == ["race", "n", "a"]
    assert 0 < len(body["rows"]) < 5  # some of the 5 races hold fewer than 1000 people
    for _race, n, a in body["rows"]:
        assert n > 1000 and a < 80  # on the released values themselves
    assert [r[1] for r in body["rows"]] == sorted((r[1] for r in body["rows"]), reverse=True)
    assert body["epsilon_spent"] == 0.5


def test_having_never_reads_exact_values(client, alice, services) -> None:  # noqa: ANN001
    """HAVING n >= <the exact count>: on exact values the row would always be kept; on noisy
    values (scale 100 at epsilon 0.01) about half the time. 30 runs, all kept: p < 1e-8."""
    kept = 0
    for k in range(1, 31):
        where = f"WHERE age > -{k}"  # always true on [0, 80]: a distinct query each time (no cache)
        exact = _exact_count(services, f"SELECT COUNT(*) AS n FROM nhanes_2017 {where}")
        body = _post(client, alice, f"SELECT COUNT(*) AS n FROM nhanes_2017 {where} HAVING n >= {exact}", 0.01)
        assert body["epsilon_spent"] == 0.01  # the filter costs nothing extra and refunds nothing
        for (n,) in body["rows"]:
            assert n >= exact  # consistent with the released value
        kept += len(body["rows"])
    assert 3 <= kept <= 27


def test_having_refusals_are_400_with_codes(client, alice) -> None:  # noqa: ANN001
    resp = client.post("/v1/query", headers=alice, json={
        "sql": "SELECT sex, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex HAVING SUM(age) > 1",
        "epsilon": 0.1, "grant": GRANT})
    assert resp.status_code == 400
    assert resp.get_json()["error"]["code"] == "having_not_selected"
