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


def test_quantiles_by_group_are_near_the_truth(client, alice, demo_data_root) -> None:  # noqa: ANN001
    sql = ("SELECT sex, MEDIAN(age) AS med, QUANTILE_CONT(height_cm, 0.9) AS p90, MIN(age) AS lo, MAX(age) AS hi, "
           "PERCENTILE_CONT(0.25) WITHIN GROUP (ORDER BY weight_kg) AS q1 FROM nhanes_2017 GROUP BY sex")
    body = ask(client, alice, sql, epsilon=1.0)
    parquet = f"'{demo_data_root}/nhanes_2017.parquet'"
    acc = body["accuracy"]
    assert set(acc["quantiles"]) == {"med", "p90", "lo", "hi", "q1"}
    assert all(acc["ci_halfwidth"][c] is None for c in acc["quantiles"])  # a rank statement instead
    assert "rank error" in acc["quantiles"]["med"]["meaning"]
    assert body["mechanism"]["measurements"]["q1"] == ["quantile(weight_kg, 0.25)"]
    assert body["mechanism"]["epsilon_per_measurement"] == 1.0 / 5
    for sex, med, p90, lo, hi, q1 in body["rows"]:
        for col, value, q, source in [("med", med, 0.5, "age"), ("p90", p90, 0.9, "height_cm"),
                                      ("lo", lo, 0.0, "age"), ("hi", hi, 1.0, "age"), ("q1", q1, 0.25, "weight_kg")]:
            n, below, upto = duckdb.sql(
                f"SELECT COUNT({source}), COUNT(*) FILTER (WHERE {source} < {value}), "
                f"COUNT(*) FILTER (WHERE {source} <= {value}) FROM {parquet} WHERE sex = '{sex}'").fetchall()[0]
            error = max(0.0, below - q * n, q * n - upto)
            grid_cell = duckdb.sql(  # rows in the candidate cell next to the value (the grid's resolution)
                f"SELECT COUNT(*) FILTER (WHERE ABS({source} - {value}) <= {acc['quantiles'][col]['resolution']}) "
                f"FROM {parquet} WHERE sex = '{sex}'").fetchall()[0][0]
            assert error <= 2 * acc["quantiles"][col]["rank_error"] + grid_cell, (col, sex, value, error)


def test_quantile_too_many_cells_is_refused_before_any_charge(client, alice, services) -> None:  # noqa: ANN001
    before = services.ledger.state(GRANT).to_dict()
    resp = client.post("/v1/query", headers=alice, json={
        "sql": "SELECT age, race, QUANTILE_CONT(height_cm, 0.5) FROM nhanes_2017 GROUP BY age, race",
        "epsilon": 0.5, "grant": GRANT})
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "too_many_groups"
    assert services.ledger.state(GRANT).to_dict() == before
