"""Quantiles (MEDIAN, QUANTILE_CONT, PERCENTILE_CONT, MIN, MAX) by OpenDP's quantile scoring and
noisy-max selection over candidates derived from the declared bounds.

Candidates are the public grid ``sandbox.sql.plan.quantile_grid`` (every value of a small int
range, else about 1,000 evenly spaced fixed-point values). The engine returns, per group, how
many bounded values fall at and between candidates; from these the scores of OpenDP's
``make_quantile_score_candidates`` are computed exactly,

    score_i = | (den - num) * #{x < c_i}  -  num * #{x > c_i} |,   alpha = num / den,

with num / den and the score sensitivity read from OpenDP's own transformation (a test checks
that the scores equal OpenDP's on raw vectors), and OpenDP's ``make_noisy_max`` (negated:
the lowest score wins) selects one candidate per group at scale 2 * sensitivity / epsilon.
A unit's k rows move a group's scores by at most k * max(num, den - num) (symmetric distance
k); across groups the rows are disjoint and the loss is linear in k, so each group's selection
is calibrated for k and the whole release costs the share once (parallel composition).

Under ``zcdp`` accounting the same pure-DP selection is charged in rho: an epsilon-DP mechanism
is (epsilon**2 / 2)-zCDP, so a rho share buys the selection at epsilon = sqrt(2 * rho), and
OpenDP's ``make_pureDP_to_zCDP`` checks that the converted map is within the share.

Accuracy is a statement about ranks, not values: with 95% probability the released value's
rank among the group's rows is within ``rank_error`` rows of q * n (the exponential-mechanism
tail bound scale * ln(m / 0.05) / den), up to the grid ``resolution`` in value units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import cast

import opendp.prelude as dp
from opendp.mod import Measurement

from sandbox.dp.opendp_types import PrivacyMap
from sandbox.errors import BadRequest
from sandbox.policy.models import Column
from sandbox.sql.plan import QuantileGrid, quantile_grid

dp.enable_features("contrib")

BETA = 0.05


@dataclass
class QuantileCounts:
    """Per group: how many bounded values sit exactly at candidate g, and how many in [c_g, c_g+1)."""

    at: list[int]
    cell: list[int]  # values v with (v - low) // step == g (at c_g or above it, below c_{g+1})

    @staticmethod
    def empty(m: int) -> QuantileCounts:
        return QuantileCounts([0] * m, [0] * m)


@lru_cache(maxsize=256)
def alpha_fraction(q: float) -> tuple[int, int]:
    """(num, den) with q = num / den as OpenDP's quantile scoring represents it."""
    t = _score_transformation(q)
    num = int(t([2])[0])  # one value above the candidate: score num
    below = int(t([-1])[0])  # one value below it: score den - num
    return num, num + below


@lru_cache(maxsize=256)
def _score_transformation(q: float) -> PrivacyMap:
    return cast(PrivacyMap, dp.t.make_quantile_score_candidates(
        dp.vector_domain(dp.atom_domain(T="i64")), dp.symmetric_distance(), [0, 1], q
    ))


def score_sensitivity(q: float, rows_per_unit: int) -> int:
    """OpenDP's L-infinity sensitivity of the scores when one unit's rows (k of them) change."""
    return int(_score_transformation(q).map(rows_per_unit))


def scores(counts: QuantileCounts, q: float) -> list[int]:
    """OpenDP's quantile scores of every candidate, from the per-candidate counts."""
    num, den = alpha_fraction(q)
    total = sum(counts.cell)
    out, below = [], 0
    for at, cell in zip(counts.at, counts.cell, strict=True):
        above = total - below - at
        out.append(abs((den - num) * below - num * above))
        below += cell
    return out


@lru_cache(maxsize=1024)
def _selector(scale: float) -> Measurement:
    return dp.m.make_noisy_max(
        dp.vector_domain(dp.atom_domain(T="u64")), dp.linf_distance(T="u64"), dp.max_divergence(),
        scale=scale, negate=True,
    )


@lru_cache(maxsize=1024)
def selection_scale(sensitivity: int, epsilon: float, zcdp_rho: float | None = None) -> float:
    """Noisy max scale for ``epsilon``; with ``zcdp_rho`` also checked as a zCDP charge of that rho."""
    scale = 2.0 * sensitivity / epsilon
    spent = cast(PrivacyMap, _selector(scale)).map(sensitivity)
    if spent > epsilon * (1 + 1e-9):
        raise BadRequest(f"quantile calibration failed: {spent} > {epsilon}", code="calibration_failed")
    if zcdp_rho is not None:
        rho = cast(PrivacyMap, dp.c.make_pureDP_to_zCDP(_selector(scale))).map(sensitivity)
        if rho > zcdp_rho * (1 + 1e-9):
            raise BadRequest(f"quantile calibration failed: rho {rho} > {zcdp_rho}", code="calibration_failed")
    return scale


def select(counts: QuantileCounts, q: float, sensitivity: int, epsilon: float, zcdp_rho: float | None = None) -> int:
    """The index of the released candidate (OpenDP noisy max over the negated scores)."""
    return int(_selector(selection_scale(sensitivity, epsilon, zcdp_rho))(scores(counts, q)))


def rank_error(q: float, sensitivity: int, epsilon: float, m: int, zcdp_rho: float | None = None) -> float:
    """Rows by which the released value's rank may miss q * n, with probability 1 - BETA."""
    _, den = alpha_fraction(q)
    return selection_scale(sensitivity, epsilon, zcdp_rho) * math.log(m / BETA) / den


@dataclass(frozen=True)
class QuantileRelease:
    values: list[float]
    scale: float
    rank_error: float
    resolution: float


def release_quantile(column: Column, q: float, rows_per_unit: int, epsilon: float,
                     per_key: list[QuantileCounts | None], zcdp_rho: float | None = None) -> QuantileRelease:
    """One released value per key (keys without rows select among candidates uniformly)."""
    grid = quantile_grid(column)
    sensitivity = score_sensitivity(q, rows_per_unit)
    values = []
    for counts in per_key:
        empty = QuantileCounts.empty(grid.m)
        index = select(counts if counts is not None else empty, q, sensitivity, epsilon, zcdp_rho)
        values.append(grid.value(index, column))
    return QuantileRelease(
        values=values,
        scale=selection_scale(sensitivity, epsilon, zcdp_rho),
        rank_error=rank_error(q, sensitivity, epsilon, grid.m, zcdp_rho),
        resolution=grid.step / column.factor,
    )


def counts_from_rows(rows: list[tuple[int, bool, int]], grid: QuantileGrid) -> QuantileCounts:
    """Fold engine rows (g, at, count) into per-candidate counts."""
    counts = QuantileCounts.empty(grid.m)
    for g, at, n in rows:
        if 0 <= g < grid.m:
            counts.cell[g] += int(n)
            if at:
                counts.at[g] += int(n)
    return counts
