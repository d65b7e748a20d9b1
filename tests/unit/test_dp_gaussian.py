"""Statistical tests of the zCDP path: discrete Gaussian scale, unbiasedness, 95% coverage, calibration."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sandbox.dp.noise import add_discrete_gaussian, gaussian_halfwidth, gaussian_scale
from sandbox.dp.planner import Primitive, plan_dp, planned_halfwidths, release
from sandbox.errors import BadRequest
from sandbox.policy.loader import load_policies
from sandbox.sql.plan import Aggregate, GroupKey, QueryPlan

POLICIES = Path(__file__).resolve().parents[2] / "policies"
N = 20_000


def _draws(sensitivity: int, rho: float, n: int = N) -> list[int]:
    noisy, _ = add_discrete_gaussian([0] * n, sensitivity, rho)
    return noisy


def _discrete_gaussian_variance(sigma: float) -> float:
    """Var of the discrete Gaussian N_Z(0, sigma^2), summed exactly over the integers."""
    w = [math.exp(-(x * x) / (2 * sigma * sigma)) for x in range(-int(40 * sigma) - 40, int(40 * sigma) + 41)]
    xs = range(-int(40 * sigma) - 40, int(40 * sigma) + 41)
    return sum(x * x * p for x, p in zip(xs, w, strict=True)) / sum(w)


@pytest.mark.parametrize(("sens", "rho"), [(1, 0.5), (1, 0.01), (5, 0.125), (400, 0.05)])
def test_noise_scale_matches_calibration(sens: int, rho: float) -> None:
    """scale = sensitivity / sqrt(2 rho); the sample variance is the discrete Gaussian's; mean ~0."""
    sigma = gaussian_scale(sens, rho)
    assert sigma == pytest.approx(sens / math.sqrt(2 * rho))
    xs = _draws(sens, rho)
    mean = sum(xs) / len(xs)
    var = sum(x * x for x in xs) / len(xs)
    expected = _discrete_gaussian_variance(sigma)
    assert abs(mean) < 5 * math.sqrt(expected / len(xs))
    assert var == pytest.approx(expected, rel=0.06)  # 20k draws: sd of the estimate is ~1%


def test_rho_doubles_when_the_scale_is_divided_by_sqrt_two() -> None:
    """A wrong calibration (e.g. using L1 formulas) would not scale like this."""
    assert gaussian_scale(10, 0.2) == pytest.approx(gaussian_scale(10, 0.1) / math.sqrt(2))
    assert gaussian_scale(20, 0.1) == pytest.approx(2 * gaussian_scale(10, 0.1))


@pytest.mark.parametrize(("sens", "rho"), [(1, 0.005), (3, 0.01), (100, 0.02)])  # scales 10, 21, 500
def test_95_percent_interval_covers_about_95_percent(sens: int, rho: float) -> None:
    """At scales of 10 and more; at scale 1 the integer steps make the interval far wider than needed."""
    t = gaussian_halfwidth(gaussian_scale(sens, rho), 0.05)
    xs = _draws(sens, rho)
    coverage = sum(abs(x) <= t for x in xs) / len(xs)
    assert 0.945 <= coverage <= 0.975


def test_huge_aggregates_saturate_and_zero_sensitivity_is_refused() -> None:
    noisy, _ = add_discrete_gaussian([2**70], 1, 0.5)
    assert abs(noisy[0] - 2**62) < 1000
    with pytest.raises(BadRequest):
        add_discrete_gaussian([5], 0, 0.5)


def _plan(aggs: tuple[Aggregate, ...], keys: tuple[GroupKey, ...] = ()) -> QueryPlan:
    return QueryPlan(dataset="nhanes_2017", columns=tuple([k.name for k in keys] + [a.name for a in aggs]),
                     aggregates=aggs, group_keys=keys, where=None)


def test_zcdp_plan_splits_rho_and_covers_truth() -> None:
    ds = load_policies(POLICIES).datasets["nhanes_2017"]
    key = GroupKey("sex", "sex", None, ds.columns["sex"].values)
    plan = plan_dp(_plan((Aggregate("count", None, "n"), Aggregate("sum", "income_ratio", "s")), (key,)),
                   ds, 0.2, "zcdp")
    assert plan.mechanism == "discrete_gaussian" and plan.epsilon_each == pytest.approx(0.1)
    assert plan.scale(Primitive("sum", "income_ratio")) == pytest.approx(500 / math.sqrt(0.2))
    truth = {("male",): 100, ("female",): 0}
    exact = {k: {Primitive("count", None): v, Primitive("sum", "income_ratio"): 0} for k, v in truth.items() if v}
    hits, trials = 0, 2000
    for _ in range(trials):
        out = release(plan, exact)
        assert out.ci_halfwidth == planned_halfwidths(plan)
        hits += all(abs(r[1] - truth[(r[0],)]) <= out.ci_halfwidth["n"] for r in out.rows)
    assert hits / trials >= 0.88


@pytest.mark.parametrize("scale", [0.5, 3.0, 17.0, 250.0, 4_000.0, 10_000.0])
@pytest.mark.parametrize("alpha", [0.05, 0.025])
def test_the_closed_form_tail_bound_is_never_narrower_than_opendp(scale: float, alpha: float) -> None:
    """Above the exact range the half-width comes from a closed-form bound: it must be conservative."""
    import time

    import opendp.prelude as dp

    from sandbox.dp.noise import gaussian_halfwidth, gaussian_tail_halfwidth

    exact = float(dp.discrete_gaussian_scale_to_accuracy(scale=scale, alpha=alpha))
    assert gaussian_tail_halfwidth(scale, alpha) >= exact
    t0 = time.monotonic()
    assert gaussian_halfwidth(1e12, alpha) == gaussian_tail_halfwidth(1e12, alpha)  # constant time at any scale
    assert gaussian_halfwidth(1e6 + scale, alpha) >= 1.96 * (1e6 + scale)
    assert time.monotonic() - t0 < 0.1
