"""The added aggregates through the real gateway: answers near the truth on the real demo data,
the epsilon split stated in the mechanism block, and the refusals that still hold."""

from __future__ import annotations

import duckdb

GRANT = "g-2026-001"


def ask(client, headers, sql: str, epsilon: float = 0.9) -> dict:  # noqa: ANN001
    resp = client.post("/v1/query", json={"sql": sql, "epsilon": epsilon, "grant": GRANT}, headers=headers)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def test_spread_by_group_is_near_the_truth(client, alice, demo_data_root) -> None:  # noqa: ANN001
    sql = ("SELECT sex, VAR_POP(height_cm) AS v, STDDEV(height_cm) AS s, AVG(height_cm) AS m "
           "FROM nhanes_2017 GROUP BY sex")
    body = ask(client, alice, sql)
    truth = {sex: (v, s) for sex, v, s in duckdb.sql(
        "SELECT sex, VAR_POP(LEAST(GREATEST(height_cm, 50), 210)), STDDEV_SAMP(LEAST(GREATEST(height_cm, 50), 210)) "
        f"FROM '{demo_data_root}/nhanes_2017.parquet' WHERE height_cm IS NOT NULL GROUP BY sex").fetchall()}
    ci = body["accuracy"]["ci_halfwidth"]
    for sex, v, s, _m in body["rows"]:
        assert abs(v - truth[sex][0]) <= 2 * ci["v"]  # the 95% half-width, doubled: fails < 1e-4
        assert abs(s - truth[sex][1]) <= 2 * ci["s"]
        assert ci["s"] < 5  # centimetres: a useful answer at epsilon 0.9 on ~4,000 people per group
    mech = body["mechanism"]
    assert mech["measurements"]["v"] == ["count(height_cm)", "centred_sum(height_cm)", "centred_sumsq(height_cm)"]
    assert mech["measurements"]["m"] == ["sum(height_cm)", "count(height_cm)"]
    # count(height_cm) is shared: 4 measurements, each a quarter of epsilon
    assert mech["epsilon_per_measurement"] == 0.9 / 4 and len(mech["scales"]) == 4
