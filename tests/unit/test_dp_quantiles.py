"""Quantiles: the scores equal OpenDP's, the calibration is OpenDP's, and the stated rank error holds.

The statistical test draws a seeded integer column with ties, computes the per-candidate counts
as the engine does, and releases the median and the 90th percentile 300 times each with the
real OpenDP noisy max. The released value's rank must be within the stated rank error of q * n
(beyond the best candidate's own distance, which the grid allows) in at least 95% of runs.
"""

from __future__ import annotations

import random

import opendp.prelude as dp
import pytest

from sandbox.dp import quantiles
from sandbox.dp.quantiles import QuantileCounts, counts_from_rows, release_quantile, score_sensitivity, scores
from sandbox.policy.models import Column
from sandbox.sql.plan import quantile_grid

dp.enable_features("contrib")


def _counts(values: list[int], column: Column) -> QuantileCounts:
    """Per-candidate counts as the engine's quantile_counts_sql computes them (fixed point ints)."""
    grid = quantile_grid(column)
    rows: dict[tuple[int, bool], int] = {}
    for v in values:
        key = ((v - grid.low) // grid.step, (v - grid.low) % grid.step == 0)
        rows[key] = rows.get(key, 0) + 1
    return counts_from_rows([(g, at, n) for (g, at), n in rows.items()], grid)


@pytest.mark.parametrize("q", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("bounds", [(0, 80), (0, 100_000)])  # step 1, and a coarse grid (step 101)
def test_scores_equal_opendps_on_the_raw_vector(q: float, bounds: tuple[int, int]) -> None:
    column = Column(type="int", bounds=bounds)
    grid = quantile_grid(column)
    rng = random.Random(int(q * 100) + bounds[1])
    values = [rng.choice([rng.randint(*bounds), bounds[0] + grid.step * rng.randint(0, 20)]) for _ in range(500)]
    candidates = [grid.low + i * grid.step for i in range(grid.m)]
    opendp_scores = dp.t.make_quantile_score_candidates(
        dp.vector_domain(dp.atom_domain(T="i64")), dp.symmetric_distance(), candidates, q)(values)
    assert scores(_counts(values, column), q) == list(opendp_scores)


def test_calibration_is_opendps() -> None:
    assert score_sensitivity(0.5, 1) == 1
    assert score_sensitivity(0.9, 3) == 3 * 9000  # alpha = 9000 / 10000: k * max(num, den - num)
    assert quantiles.alpha_fraction(0.9) == (9000, 10000)
    scale = quantiles.selection_scale(27000, 0.25)
    assert scale == pytest.approx(2 * 27000 / 0.25)


@pytest.mark.parametrize("q", [0.5, 0.9])
def test_rank_error_holds_at_95_percent(q: float) -> None:
    column = Column(type="int", bounds=(0, 80))
    rng = random.Random(7)
    values = [min(80, max(0, round(rng.gauss(40, 15)))) for _ in range(2000)]
    counts = _counts(values, column)
    n = len(values)
    num, den = quantiles.alpha_fraction(q)
    best = min(scores(counts, q)) / den  # the grid's own distance to q * n (ties)
    runs, within, errors = 300, 0, []
    for _ in range(runs):
        out = release_quantile(column, q, 1, 0.2, [counts])
        v = out.values[0]
        low, high = sum(x < v for x in values), sum(x <= v for x in values)
        error = max(0.0, low - q * n, q * n - high)  # distance of q * n to the value's ranks
        errors.append(error)
        within += error <= out.rank_error + best
    assert within / runs >= 0.95
    assert out.rank_error < 0.1 * n  # a useful statement at epsilon 0.2 on 2,000 rows
    assert out.resolution == 1.0
    # and not vacuous: the errors are mostly well inside the bound
    assert sorted(errors)[runs // 2] <= out.rank_error / 2


def test_empty_group_selects_some_candidate() -> None:
    column = Column(type="float", bounds=(0.0, 5.0), scale=2)
    out = release_quantile(column, 0.5, 1, 1.0, [None, None])
    assert all(0.0 <= v <= 5.0 for v in out.values)
    assert out.resolution == pytest.approx(0.01)


def test_max_does_not_single_out_an_outlier() -> None:
    """The attack: 300 people spend 10..20, one spends 97. Does MAX(cost) give the 97 away?

    With and without the outlier, the released maximum is spread over the candidates above the
    crowd alike: the chance of a value >= 90 (and of exactly 97) barely moves (epsilon 0.5)."""
    column = Column(type="int", bounds=(0, 100))
    rng = random.Random(3)
    crowd = [rng.randint(10, 20) for _ in range(300)]
    runs = 3000
    with_outlier = release_quantile(column, 1.0, 1, 0.5, [_counts(crowd + [97], column)] * runs).values
    without = release_quantile(column, 1.0, 1, 0.5, [_counts(crowd, column)] * runs).values
    high_with = sum(v >= 90 for v in with_outlier) / runs
    high_without = sum(v >= 90 for v in without) / runs
    assert abs(high_with - high_without) < 0.05
    assert sum(v == 97 for v in with_outlier) / runs < 0.05  # not where the outlier is
    assert min(with_outlier) >= 10  # but still a maximum: never far below the crowd's top


def test_under_zcdp_a_quantile_is_charged_rho_by_opendps_conversion() -> None:
    """A pure epsilon-DP noisy max is (epsilon**2 / 2)-zCDP: a rho share buys epsilon sqrt(2 rho)."""
    rho = 0.02
    epsilon = (2 * rho) ** 0.5
    sensitivity = score_sensitivity(0.5, 3)
    scale = quantiles.selection_scale(sensitivity, epsilon, rho)
    assert scale == pytest.approx(2 * sensitivity / epsilon)
    selector = dp.m.make_noisy_max(dp.vector_domain(dp.atom_domain(T="u64")), dp.linf_distance(T="u64"),
                                   dp.max_divergence(), scale=scale, negate=True)
    assert dp.c.make_pureDP_to_zCDP(selector).map(sensitivity) <= rho * (1 + 1e-9)
    with pytest.raises(Exception, match="calibration"):
        quantiles.selection_scale(sensitivity, epsilon * 1.01, rho)  # more epsilon than the rho pays for
