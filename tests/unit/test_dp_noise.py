"""Statistical tests of the noise: scale, unbiasedness, 95% interval coverage, sensitivity."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sandbox.dp.noise import add_discrete_laplace, halfwidth, laplace_scale
from sandbox.dp.planner import Primitive, plan_dp, release
from sandbox.errors import BadRequest
from sandbox.policy.loader import load_policies
from sandbox.sql.plan import Aggregate, GroupKey, QueryPlan

POLICIES = Path(__file__).resolve().parents[2] / "policies"
N = 20_000


def _draws(sensitivity: int, epsilon: float, n: int = N) -> list[int]:
    noisy, _ = add_discrete_laplace([0] * n, sensitivity, epsilon)
    return noisy


@pytest.mark.parametrize(("sens", "eps"), [(1, 1.0), (1, 0.1), (5, 0.5), (400, 0.25)])
def test_noise_scale_matches_calibration(sens: int, eps: float) -> None:
    """Discrete Laplace(b): E|X| is close to b for b >> 1; the sample mean is ~0."""
    b = laplace_scale(sens, eps)
    assert b == pytest.approx(sens / eps)
    xs = _draws(sens, eps)
    mean = sum(xs) / len(xs)
    var = sum(x * x for x in xs) / len(xs)
    # variance of discrete Laplace with scale b: 2 e^{-1/b} / (1 - e^{-1/b})^2
    q = math.exp(-1 / b)
    expected_var = 2 * q / (1 - q) ** 2
    assert abs(mean) < 5 * math.sqrt(expected_var / len(xs))
    assert var == pytest.approx(expected_var, rel=0.1)


@pytest.mark.parametrize(("sens", "eps"), [(1, 0.5), (3, 1.0), (100, 0.2)])
def test_95_percent_interval_covers_about_95_percent(sens: int, eps: float) -> None:
    b = laplace_scale(sens, eps)
    t = halfwidth(b, 0.05)
    xs = _draws(sens, eps)
    coverage = sum(abs(x) <= t for x in xs) / len(xs)
    # OpenDP's accuracy is a guarantee (>= 95%); discreteness makes it slightly conservative
    assert 0.945 <= coverage <= 0.975


def test_huge_aggregates_saturate_instead_of_failing() -> None:
    """Refusing after the charge would depend on the data; saturating does not."""
    noisy, _ = add_discrete_laplace([2**70, -(2**70)], 1, 1.0)
    assert abs(noisy[0] - 2**62) < 1000 and abs(noisy[1] + 2**62) < 1000


def test_zero_sensitivity_is_refused() -> None:
    with pytest.raises(BadRequest):
        add_discrete_laplace([5], 0, 1.0)


def test_sensitivity_uses_the_engine_integers() -> None:
    """Half-way bounds round the way the engine clamps: ceil(low * f), floor(high * f)."""
    from sandbox.policy.models import Column

    assert Column(type="float", bounds=(0, 2.5), scale=0).fixed_bounds == (0, 2)
    assert Column(type="float", bounds=(0, 0.125), scale=2).fixed_bounds == (0, 12)
    assert Column(type="float", bounds=(0, 0.29), scale=2).fixed_bounds == (0, 29)
    assert Column(type="float", bounds=(-0.5, 0.5), scale=1).fixed_bounds == (-5, 5)
    with pytest.raises(ValueError, match="hold no value"):
        Column(type="float", bounds=(0.1, 0.4), scale=0)


def _plan(aggs: tuple[Aggregate, ...], keys: tuple[GroupKey, ...] = ()) -> QueryPlan:
    return QueryPlan(
        dataset="nhanes_2017",
        columns=tuple([k.name for k in keys] + [a.name for a in aggs]),
        aggregates=aggs,
        group_keys=keys,
        where=None,
    )


def test_sensitivity_and_epsilon_split() -> None:
    ds = load_policies(POLICIES).datasets["nhanes_2017"]
    ds2 = ds.model_copy(update={"max_rows_per_unit": 3})
    plan = plan_dp(
        _plan((Aggregate("count", None, "n"), Aggregate("avg", "income_ratio", "m"),
               Aggregate("sum", "income_ratio", "s"))),
        ds2, 0.9,
    )
    # COUNT(*), SUM(income_ratio), COUNT(income_ratio): AVG shares SUM's measurement
    assert plan.primitives == (
        Primitive("count", None), Primitive("sum", "income_ratio"), Primitive("count", "income_ratio"),
    )
    assert plan.epsilon_each == pytest.approx(0.3)
    assert plan.sensitivity(Primitive("count", None)) == 3
    # bounds [0, 5] at scale 2 -> 500 fixed-point units, times 3 rows per unit
    assert plan.sensitivity(Primitive("sum", "income_ratio")) == 1500


def test_release_covers_every_declared_key_and_ci_covers_truth() -> None:
    ds = load_policies(POLICIES).datasets["nhanes_2017"]
    key = GroupKey("sex", "sex", None, ds.columns["sex"].values)
    plan = plan_dp(_plan((Aggregate("count", None, "n"),), (key,)), ds, 1.0)
    truth = {("male",): 100, ("female",): 0}
    exact = {k: {Primitive("count", None): v} for k, v in truth.items() if v}
    hits = 0
    trials = 2000
    for _ in range(trials):
        out = release(plan, exact)
        assert [r[0] for r in out.rows] == ["male", "female"]  # the empty group is released too
        t = out.ci_halfwidth["n"]
        hits += all(abs(r[1] - truth[(r[0],)]) <= t for r in out.rows)
    # two independent cells each covered with >= 95%: joint coverage >= ~0.9
    assert hits / trials >= 0.88
