"""Statistical tests of the spread estimates (VAR_POP, VAR_SAMP, STDDEV) from three noisy sums.

The exact parts are computed here from a seeded synthetic column exactly as the engine computes
them (fixed point, centred on the midpoint of the bounds); ``release`` adds the real OpenDP
noise. Checked: the noise scales equal sensitivity / epsilon share, the estimates centre on the
true statistic, the 95% half-width covers it at least 95% of the time, and the epsilon split.
"""

from __future__ import annotations

import math
import random
import statistics
from pathlib import Path

import pytest
from sqlglot import exp

from sandbox.dp import spread
from sandbox.dp.planner import Primitive, plan_dp, release
from sandbox.policy.loader import load_policies
from sandbox.policy.models import Column
from sandbox.sql.analyze import analyze

POLICIES = load_policies(Path(__file__).resolve().parents[2] / "policies")
CATALOG = POLICIES.datasets
GRANTED = {ds: set(g.columns) for ds, g in POLICIES.grants["g-2026-001"].datasets.items()}
NHANES = CATALOG["nhanes_2017"]


def _values(column: Column, n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    low, high = column.bounds
    mid, width = (low + high) / 2, (high - low)
    return [min(max(rng.gauss(mid, width / 8), low), high) for _ in range(n)]


def _exact(values: list[float], column: Column) -> dict[Primitive, int]:
    """COUNT, SUM(d) and SUM(d^2) as the engine computes them (sandbox.dp.spread's SQL)."""
    c = spread.centring(column)
    fixed = [min(max(round(v * column.factor), column.fixed_bounds[0]), column.fixed_bounds[1]) for v in values]
    squares = [round((x - c.centre) ** 2 / (1 << c.shift)) for x in fixed]
    name = next(k for k, v in NHANES.columns.items() if v == column)
    return {
        Primitive("count", name): len(fixed),
        Primitive("centred_sum", name): sum(x - c.centre for x in fixed),
        Primitive("centred_sumsq", name): sum(squares),
    }


@pytest.mark.parametrize(("fn", "kind"), [("VAR_POP", "var_pop"), ("VAR_SAMP", "var_samp"),
                                         ("STDDEV", "stddev_samp"), ("STDDEV_POP", "stddev_pop")])
def test_spread_estimate_is_centred_and_covered(fn: str, kind: str) -> None:
    column = NHANES.columns["height_cm"]
    values = _values(column, 400, seed=11)
    truth = statistics.pvariance(values) if kind.endswith("pop") else statistics.variance(values)
    truth = math.sqrt(truth) if kind.startswith("stddev") else truth
    plan = plan_dp(analyze(f"SELECT {fn}(height_cm) AS s FROM nhanes_2017", CATALOG, GRANTED), NHANES, 1.0)
    assert plan.epsilon_each == pytest.approx(1.0 / 3)  # count, centred sum, centred sum of squares
    exact = {(): _exact(values, column)}
    estimates, covered = [], 0
    for _ in range(400):
        out = release(plan, exact)
        (value,) = out.rows[0]
        estimates.append(value)
        covered += abs(value - truth) <= out.ci_halfwidth["s"]
    assert out.measurements == {"s": ["count(height_cm)", "centred_sum(height_cm)", "centred_sumsq(height_cm)"]}
    # centred on the truth (median, since clamping to [0, h^2] skews the mean at low counts)
    assert statistics.median(estimates) == pytest.approx(truth, rel=0.1)
    assert covered / len(estimates) >= 0.95
    # and the interval says something: much narrower than the whole public range
    assert out.ci_halfwidth["s"] < spread.max_variance(column) / 4


def test_noise_scales_are_sensitivity_over_share() -> None:
    column = NHANES.columns["height_cm"]  # [50, 210] at scale 1: fixed [500, 2100], centre 1300, h = 800
    c = spread.centring(column)
    assert (c.centre, c.half, c.shift) == (1300, 800, 0)
    plan = plan_dp(analyze("SELECT VAR_POP(height_cm) FROM nhanes_2017", CATALOG, GRANTED), NHANES, 0.6)
    out = release(plan, {(): _exact(_values(column, 50, 1), column)})
    assert out.scales == {
        "count(height_cm)": pytest.approx(1 / 0.2),
        "centred_sum(height_cm)": pytest.approx(800 / 0.2),
        "centred_sumsq(height_cm)": pytest.approx(800**2 / 0.2),
    }


def test_shared_count_is_measured_once() -> None:
    sql = "SELECT AVG(age) AS a, COUNT(age) AS n, STDDEV(age) AS s FROM nhanes_2017"
    plan = plan_dp(analyze(sql, CATALOG, GRANTED), NHANES, 1.0)
    assert [p.label for p in plan.primitives] == ["sum(age)", "count(age)", "centred_sum(age)", "centred_sumsq(age)"]
    assert plan.epsilon_each == pytest.approx(0.25)


def test_wide_bounds_shift_the_squares_into_40_bits() -> None:
    column = Column(type="int", bounds=(0, 1_000_000_000))
    c = spread.centring(column)
    assert c.shift > 0 and c.square_sensitivity <= 2**40
    assert "ROUND" in spread.square_tree(exp.column("v"), column).sql(dialect="duckdb")


def test_few_rows_give_no_estimate_and_the_whole_range() -> None:
    column = NHANES.columns["age"]
    parts = spread.Parts(1.0, 0.0, 0.0)
    assert spread.estimate("var_pop", parts, column) is None
    assert spread.halfwidth("var_pop", parts, 1.0, 1.0, 1.0, column) == spread.max_variance(column)
    wild = spread.Parts(100.0, 0.0, 1e12)  # noise far above any bounded variance: clamped
    assert spread.estimate("var_pop", wild, column) == spread.max_variance(column)


def test_under_zcdp_the_spread_is_gaussian_and_its_halfwidth_gaussian_too() -> None:
    from sandbox.dp.noise import gaussian_halfwidth

    plan = plan_dp(analyze("SELECT VAR_POP(height_cm) AS v FROM nhanes_2017", CATALOG, GRANTED), NHANES, 0.3, "zcdp")
    assert plan.mechanism == "discrete_gaussian"
    exact = {(): {p: 0 for p in plan.primitives}}
    exact[()][plan.primitives[0]] = 1000
    out = release(plan, exact)
    count_scale = out.scales[plan.primitives[0].label]
    assert count_scale == pytest.approx(plan.scale(plan.primitives[0]))
    assert gaussian_halfwidth(count_scale, 0.05 / 3) == plan.halfwidth(count_scale, 0.05 / 3)
    assert out.ci_halfwidth["v"] is not None and out.ci_halfwidth["v"] > 0
